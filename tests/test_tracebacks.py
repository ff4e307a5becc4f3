"""No password in the tracebacks of checkout errors: Django's debug page (and any
error reporter) shows every frame's local variables, so none on the checkout path
may hold the password. Rendered with ``DEBUG=True``, where Django's own
sensitive-variable filter is off, against the real servers."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import MySQLdb
import psycopg
import pytest
from django.db import OperationalError
from django.views.debug import ExceptionReporter

from django_poolbackend import PoolTimeout, process

from .conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])


@pytest.fixture
def secret_role(vendor: str) -> Iterator[tuple[str, str]]:
    """A role of the test's own with a password that appears nowhere else."""
    user = f"dpb_secret_{os.getpid()}"
    password = "pw_" + secrets.token_hex(12)
    if vendor == "default":
        conn = psycopg.connect(
            host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
        )
        conn.execute(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")
    else:
        conn = MySQLdb.connect(host="127.0.0.1", user="root", autocommit=True)
        cursor = conn.cursor()
        for host in ("%", "localhost"):
            cursor.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'")
            cursor.execute(f"GRANT ALL ON `dpb\\_%`.* TO '{user}'@'{host}'")
    try:
        yield user, password
    finally:
        for alias in [a for a in process.pools if a.startswith("dpb_t")]:
            process.retire(alias)
        if vendor == "default":
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (user,),
            )
            conn.execute(f'DROP ROLE "{user}"')
        else:
            cursor = conn.cursor()
            for host in ("%", "localhost"):
                cursor.execute(f"DROP USER '{user}'@'{host}'")
        conn.close()


def as_role(pooled: Any, role: tuple[str, str], **changes: Any) -> Any:
    pooled.settings_dict["USER"], pooled.settings_dict["PASSWORD"] = role
    pooled.settings_dict.update(changes)
    return pooled


def checkout_error(wrapper: Any) -> BaseException:
    """The error of a checkout, caught in a frame with no secret of its own (the
    test's frame holds the password, and a traceback starts where it is caught)."""
    try:
        wrapper.ensure_connection()
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        return exc
    raise AssertionError("the checkout succeeded")


def rendered(exc: BaseException) -> tuple[str, str]:
    reporter = ExceptionReporter(None, type(exc), exc, exc.__traceback__)
    return reporter.get_traceback_html(), reporter.get_traceback_text()


def assert_secret_absent(exc: BaseException, password: str, settings: Any) -> None:
    settings.DEBUG = True
    html, text = rendered(exc)
    # The page shows frames and their locals at all (our own frames among them).
    assert "ensure_connection" in html and "Local vars" in html
    assert password not in html
    assert password not in text


def test_a_pool_timeout_traceback_holds_no_password(make_pooled, vendor, secret_role, settings):
    user, password = secret_role
    pooled = as_role(make_pooled(vendor, max_size=1, timeout=0.1), secret_role)
    holder = pooled.wrapper()
    holder.ensure_connection()
    error = checkout_error(pooled.wrapper())
    assert isinstance(error, PoolTimeout)
    assert_secret_absent(error, password, settings)
    # The pool key names the settings by a digest of the password, never by it.
    assert password not in repr(pooled.pool.key)
    assert user in repr(pooled.pool.key)
    holder.close()


def test_failed_connect_and_backoff_tracebacks_hold_no_password(
    make_pooled, vendor, secret_role, settings
):
    _, password = secret_role
    pooled = as_role(make_pooled(vendor, timeout=5), secret_role, PORT=str(free_port()))
    failed = checkout_error(pooled.wrapper())
    assert isinstance(failed, OperationalError)
    assert pooled.stats()["connect_errors"] == 1
    assert_secret_absent(failed, password, settings)
    # The same error again at once, without a dial: the connect back-off.
    backoff = checkout_error(pooled.wrapper())
    assert isinstance(backoff, OperationalError)
    assert pooled.stats()["connect_backoffs"] == 1
    assert_secret_absent(backoff, password, settings)
    # The driver's error keeps its type and message.
    cause = failed.__cause__
    assert isinstance(cause, psycopg.OperationalError | MySQLdb.OperationalError)
    assert str(cause) == str(failed)


@pytest.mark.parametrize("vendor", ["mysql"])
def test_a_wrong_password_traceback_holds_no_password(make_pooled, vendor, secret_role, settings):
    # MariaDB checks passwords here (PostgreSQL trusts local connections).
    user, password = secret_role
    pooled = as_role(make_pooled("mysql"), (user, password + "_wrong"))
    failed = checkout_error(pooled.wrapper())
    assert isinstance(failed, OperationalError)
    assert "Access denied" in str(failed)
    assert_secret_absent(failed, password + "_wrong", settings)


@pytest.mark.parametrize("vendor", ["mysql"])
def test_a_corrected_password_gets_a_pool_of_its_own(make_pooled, vendor, secret_role):
    user, password = secret_role
    pooled = as_role(make_pooled("mysql"), (user, password + "_wrong"))
    with pytest.raises(OperationalError):
        pooled.wrapper().ensure_connection()
    wrong_pool = pooled.pool
    pooled.settings_dict["PASSWORD"] = password
    corrected = pooled.wrapper()
    corrected.ensure_connection()  # no back-off from the wrong password's pool
    assert pooled.pool is not wrong_pool and wrong_pool.closed
    # An equal password in another object names the same pool.
    pooled.settings_dict["PASSWORD"] = "".join(list(password))
    again = pooled.wrapper()
    again.ensure_connection()
    assert pooled.pool is corrected._dpb_slot.pool
    again.close()
    corrected.close()


@pytest.mark.django_db(databases=[])
def test_the_password_digest_is_keyed_per_process():
    import hashlib

    digest = process.password_digest("hunter2")
    assert digest == process.password_digest("hunter2")
    assert digest != process.password_digest("hunter3")
    assert digest != hashlib.sha256(b"hunter2").digest()
    assert b"hunter2" not in digest
