"""Pool settings at the edges of what they allow: every rejection is the usual
``ImproperlyConfigured`` (and ``django_poolbackend.E001`` in ``manage.py check``),
with its exact text, never a stray ``OverflowError`` or the driver's own error.

The largest number of seconds any seconds key takes is ``threading.TIMEOUT_MAX``
in whole seconds: ``timeout`` is handed to a lock's wait, which refuses more.
"""

from __future__ import annotations

import copy
import io
import math
import threading
import warnings
from dataclasses import fields
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections
from django.test import override_settings

from django_poolbackend import checks, process
from django_poolbackend.core.config import MAX_SECONDS, PoolConfig

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

TOP = math.floor(threading.TIMEOUT_MAX)
SECRET = "dpb-c-never-shown"


def _settings(alias_base: str = "default", **changes: Any) -> dict:
    db = copy.deepcopy(connections[alias_base].settings_dict)
    db.pop("POOL", None)
    db.update(changes)
    return db


def _first_use_error(db: dict, alias: str = "x") -> str:
    """The message of the first checkout of a wrapper built on *db*."""
    try:
        wrapper = type(connections["default"])(db, alias)  # built early: no error yet
        with pytest.raises(ImproperlyConfigured) as info:
            wrapper.ensure_connection()
        assert alias not in process.pools  # nothing opened, nothing leaked
    finally:
        # A value wrongly accepted must not leave its pool to the next case, which
        # would then reuse it instead of validating its own settings.
        process.retire(alias)
    return str(info.value)


def _check_command_error(db: dict, alias: str = "x") -> str:
    """What ``manage.py check`` reports for *db* as alias *alias* (it must fail)."""
    databases = {**copy.deepcopy(dict(connections.settings)), alias: db}
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings():
        # Django warns that overriding DATABASES does not rebuild the connections:
        # the checks read the setting itself, which is all that is wanted here.
        warnings.filterwarnings("ignore", "Overriding setting DATABASES", UserWarning)
        with override_settings(DATABASES=databases):
            with pytest.raises(SystemCheckError) as info:
                call_command("check", stdout=out, stderr=err)
    (message,) = checks.pool_settings_messages({alias: db})
    assert message.id == "django_poolbackend.E001"
    assert message.msg in str(info.value)
    return str(message.msg)


SECONDS_CASES = [
    (
        {"timeout": 10**400},
        "DATABASES['x']['POOL']['timeout'] = an integer of about 401 digits is invalid: "
        f"must be a number of seconds >= 0 and at most {TOP}.",
    ),
    (
        {"timeout": threading.TIMEOUT_MAX + 1},
        f"DATABASES['x']['POOL']['timeout'] = {threading.TIMEOUT_MAX + 1!r} is invalid: "
        f"must be a number of seconds >= 0 and at most {TOP}.",
    ),
    (
        {"timeout": float("inf")},
        "DATABASES['x']['POOL']['timeout'] = inf is invalid: "
        f"must be a number of seconds >= 0 and at most {TOP}.",
    ),
    (
        {"timeout": float("nan")},
        "DATABASES['x']['POOL']['timeout'] = nan is invalid: must be a number of seconds >= 0.",
    ),
    (
        {"max_lifetime": 10**400},
        "DATABASES['x']['POOL']['max_lifetime'] = an integer of about 401 digits is invalid: "
        f"must be a number of seconds > 0 and at most {TOP}, or None.",
    ),
    (
        {"max_idle": float("inf")},
        "DATABASES['x']['POOL']['max_idle'] = inf is invalid: "
        f"must be a number of seconds > 0 and at most {TOP}, or None.",
    ),
    (
        {"max_idle": float("-inf")},
        "DATABASES['x']['POOL']['max_idle'] = -inf is invalid: "
        "must be a number of seconds > 0 or None.",
    ),
    (
        {"leak_timeout": 10**10},
        "DATABASES['x']['POOL']['leak_timeout'] = 10000000000 is invalid: "
        f"must be a number of seconds >= 0 and at most {TOP}.",
    ),
    (
        {"pre_ping": 10**400},
        "DATABASES['x']['POOL']['pre_ping'] = an integer of about 401 digits is invalid: "
        f"must be True, False or a number of seconds >= 0 and at most {TOP} of idleness.",
    ),
    (
        {"pre_ping": float("nan")},
        "DATABASES['x']['POOL']['pre_ping'] = nan is invalid: "
        "must be True, False or a number of seconds >= 0 of idleness.",
    ),
    (
        {"timeout": -(10**5000)},
        "DATABASES['x']['POOL']['timeout'] = a negative integer of about 5001 digits is "
        "invalid: must be a number of seconds >= 0.",
    ),
]


@pytest.mark.parametrize(("pool", "message"), SECONDS_CASES)
def test_seconds_out_of_range_are_configuration_errors(pool, message):
    db = _settings(POOL=pool)
    assert _first_use_error(db) == message
    assert _check_command_error(db) == message


def test_the_largest_timeout_allowed_is_a_working_wait(make_pooled, vendor):
    """MAX_SECONDS itself is accepted, and a checkout that has to wait with it
    waits (a lock's wait with more raises OverflowError)."""
    assert MAX_SECONDS == TOP
    assert PoolConfig.from_mapping({"timeout": TOP, "max_lifetime": TOP}).timeout == float(TOP)
    pooled = make_pooled(vendor, max_size=1, timeout=TOP)
    holder = pooled.wrapper()
    pooled.backend_id(holder)
    got: dict[str, Any] = {}

    def wait_for_it() -> None:
        waiter = pooled.wrapper()
        got["id"] = pooled.backend_id(waiter)
        waiter.close()

    thread = threading.Thread(target=wait_for_it, daemon=True)
    thread.start()
    from .conftest import wait_for

    wait_for(lambda: pooled.stats()["waiting"] == 1, what="the checkout to wait")
    first = pooled.backend_id(holder)
    holder.close()
    thread.join(30)
    assert got["id"] == first


# -- OPTIONS["pool"], Django's spelling ------------------------------------------------


def test_options_pool_check_must_be_psycopg_pools_check_or_none():
    db = _settings(OPTIONS={"pool": {"check": 1}})
    message = (
        "DATABASES['x']['OPTIONS']['pool']['check'] = 1 is invalid: it is an int, not a "
        "callable. Allowed: None (no check at checkout, POOL['pre_ping'] = False) or "
        "psycopg_pool.ConnectionPool.check_connection (a check at every checkout, "
        "POOL['pre_ping'] = True). For another schedule, move the settings to POOL and "
        "set its pre_ping."
    )
    assert _first_use_error(db) == message
    assert _check_command_error(db) == message


def test_options_pool_check_with_another_callable_is_refused():
    db = _settings(OPTIONS={"pool": {"check": len}})
    message = _first_use_error(db)
    assert message.startswith(
        "DATABASES['x']['OPTIONS']['pool']['check'] = <built-in function len> is invalid: "
        "it is a callable django_poolbackend would not run. Allowed: None"
    )
    assert _check_command_error(db) == message


def test_options_pool_check_is_translated():
    from psycopg_pool import ConnectionPool

    from django_poolbackend import settings as pool_settings

    for check, pre_ping in ((ConnectionPool.check_connection, True), (None, False)):
        db = _settings(OPTIONS={"pool": {"check": check}})
        _, config = pool_settings.prepare(db, "x")
        assert isinstance(config, PoolConfig) and config.pre_ping is pre_ping


def test_options_pool_max_size_none_means_min_size():
    from django_poolbackend import settings as pool_settings

    _, config = pool_settings.prepare(_settings(OPTIONS={"pool": {"min_size": 3, "max_size": None}}), "x")
    assert isinstance(config, PoolConfig) and (config.min_size, config.max_size) == (3, 3)
    db = _settings(OPTIONS={"pool": {"max_size": None}})
    message = (
        "DATABASES['x']['OPTIONS']['pool']['max_size'] = None is invalid here: psycopg_pool "
        "reads it as 'equal to min_size', and min_size is not set (psycopg_pool's default "
        "of 4 is not django_poolbackend's 0). Allowed: an integer >= 1, or None together "
        "with min_size."
    )
    assert _first_use_error(db) == message
    assert _check_command_error(db) == message


def test_options_pool_seconds_keys_have_the_same_range():
    db = _settings(OPTIONS={"pool": {"timeout": 10**400}})
    message = (
        "DATABASES['x']['OPTIONS']['pool']['timeout'] = an integer of about 401 digits is "
        f"invalid: must be a number of seconds >= 0 and at most {TOP}."
    )
    assert _first_use_error(db) == message
    assert _check_command_error(db) == message


# -- dotted paths and the connect_params hook -------------------------------------------

NOT_CALLABLE = 3


def test_a_dotted_path_to_an_int_is_named_with_its_article():
    path = f"{__name__}.NOT_CALLABLE"
    (message,) = checks.pool_settings_messages({"x": _settings(POOL={"reset": path})})
    assert message.id == "django_poolbackend.E007"
    assert message.msg.startswith(
        f"DATABASES['x']['POOL']['reset'] = {path!r} names an int, which can't be called."
    )


def returns_a_list(alias: str, params: dict) -> Any:
    return sorted(params.items())


def returns_int_keys(alias: str, params: dict) -> Any:
    return {**params, 1: SECRET}


def returns_a_mapping(alias: str, params: dict) -> Any:
    import types

    return types.MappingProxyType(dict(params))


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ("returns_a_list", "a list"),
        ("returns_int_keys", "a mapping with an int key"),
    ],
)
def test_a_connect_params_hook_that_returns_no_parameters_is_named(
    make_pooled, vendor, hook, problem
):
    path = f"{__name__}.{hook}"
    pooled = make_pooled(vendor, connect_params=path)
    with pytest.raises(ImproperlyConfigured) as info:
        pooled.wrapper().ensure_connection()
    assert str(info.value) == (
        f"DATABASES[{pooled.alias!r}]['POOL']['connect_params'] = {path!r} returned "
        f"{problem}. Allowed: a dict of connection parameters with str keys (the params "
        "it was given, changed as needed)."
    )
    assert SECRET not in str(info.value)
    stats = pooled.stats()
    assert (stats["connect_errors"], stats["size"], stats["in_use"]) == (1, 0, 0)
    assert pooled.server_sessions() == set()


def test_a_connect_params_hook_may_return_any_mapping(make_pooled, vendor):
    pooled = make_pooled(vendor, connect_params=f"{__name__}.returns_a_mapping")
    wrapper = pooled.wrapper()
    assert pooled.backend_id(wrapper) in pooled.server_sessions()
    wrapper.close()


def test_expected_processes_is_the_django_layers_key_not_the_cores():
    """The pool never reads expected_processes, so the core config has no such
    field; the Django layer's config adds it, last, so the allowed keys, the
    first error and the figures read as they did."""
    from django_poolbackend import settings as pool_settings

    assert "expected_processes" not in {f.name for f in fields(PoolConfig)}
    _, config = pool_settings.prepare(_settings(POOL={"expected_processes": 4}), "x")
    assert isinstance(config, pool_settings.PoolConfig) and config.expected_processes == 4
    assert list(config.as_dict())[-3:] == ["connect_params", "release", "expected_processes"]
    # Checked in the same pass as the pool's own keys, before the sizes are compared.
    _, error = pool_settings.prepare(
        _settings(POOL={"min_size": 5, "max_size": 2, "expected_processes": 0}), "x"
    )
    assert str(error) == (
        "DATABASES['x']['POOL']['expected_processes'] = 0 is invalid: must be an "
        "integer >= 1 or None."
    )
