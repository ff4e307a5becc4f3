"""reset="rollback" / "full" / a callable, and the connect_params hook, on real servers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_poolbackend import process

from .conftest import ROOT, server_env

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

SET_VAR = {
    "postgresql": "SELECT set_config('dpb.marker', 'left-behind', false)",
    "mysql": "SET @dpb_marker = 'left-behind'",
}
GET_VAR = {
    "postgresql": "SELECT current_setting('dpb.marker', true)",
    "mysql": "SELECT @dpb_marker",
}
CALLS: list[object] = []


def record_reset(conn):
    CALLS.append(conn)


def add_application_marker(alias, params):
    CALLS.append((alias, sorted(params)))
    return params


def _leave_marker_and_read_it_back(pooled):
    wrapper = pooled.wrapper()
    first = pooled.backend_id(wrapper)
    with wrapper.cursor() as cursor:
        cursor.execute(SET_VAR[pooled.vendor])
    wrapper.close()
    again = pooled.backend_id(wrapper)
    assert again == first  # same physical connection: only the reset differs
    with wrapper.cursor() as cursor:
        cursor.execute(GET_VAR[pooled.vendor])
        value = cursor.fetchone()[0]
    wrapper.close()
    return value


def test_rollback_reset_keeps_session_state(make_pooled, vendor):
    pooled = make_pooled(vendor, reset="rollback")
    assert _leave_marker_and_read_it_back(pooled) == "left-behind"
    assert pooled.stats()["resets"] == 0  # idle on return: no round trip


def test_full_reset_clears_session_state_and_sets_the_connection_up_again(make_pooled, vendor):
    pooled = make_pooled(vendor, reset="full")
    assert _leave_marker_and_read_it_back(pooled) in (None, "")
    assert pooled.stats()["resets"] == 2
    wrapper = pooled.wrapper()
    with wrapper.cursor() as cursor:  # the one-time set-up ran again after the reset
        if pooled.vendor == "postgresql":
            cursor.execute("SHOW TimeZone")
            assert cursor.fetchone()[0] == "UTC"
        else:
            # The server default is REPEATABLE-READ; Django sets READ COMMITTED.
            cursor.execute(
                "SHOW SESSION VARIABLES WHERE Variable_name IN "
                "('tx_isolation', 'transaction_isolation')"
            )
            assert {value for _, value in cursor.fetchall()} == {"READ-COMMITTED"}
    wrapper.close()


def test_callable_reset_and_connect_params_hook(make_pooled, vendor):
    CALLS.clear()
    pooled = make_pooled(
        vendor,
        reset=f"{__name__}.record_reset",
        connect_params=f"{__name__}.add_application_marker",
    )
    wrapper = pooled.wrapper()
    pooled.backend_id(wrapper)
    raw = wrapper.connection
    wrapper.close()
    assert CALLS[0][0] == pooled.alias
    assert "password" not in CALLS[0][1] or pooled.vendor == "mysql"
    assert CALLS[1] is raw


@pytest.mark.parametrize("key", ["reset", "connect_params"])
def test_a_dotted_path_that_does_not_import_fails_the_first_checkout(make_pooled, vendor, key):
    pooled = make_pooled(vendor, **{key: "dpb_no_such_module.hook"})
    with pytest.raises(ImproperlyConfigured) as info:
        pooled.wrapper().ensure_connection()
    message = str(info.value)
    assert message.startswith(
        f"DATABASES[{pooled.alias!r}]['POOL'][{key!r}] = 'dpb_no_such_module.hook' can't be "
        "imported: ModuleNotFoundError: No module named 'dpb_no_such_module'. Allowed: "
    )
    assert "the dotted path of an importable callable" in message
    # Refused before anything was opened: no pool, no session on the server.
    assert pooled.alias not in process.pools
    assert pooled.server_sessions() == set()


def test_dotted_paths_are_not_imported_while_django_loads_the_apps():
    """A wrapper built before the app registry is ready (a model module touching
    ``connection``) leaves the user's module alone; one built afterwards imports it."""
    code = (
        "import json, sys\n"
        "from django.db import connections\n"
        "connections['default']\n"
        "before = 'tests.connect_hooks' in sys.modules\n"
        "import django\n"
        "django.setup()\n"
        "wrapper = type(connections['default'])(dict(connections.settings['default']), 'x')\n"
        "print(json.dumps([before, 'tests.connect_hooks' in sys.modules,\n"
        "                  type(wrapper._dpb_config).__name__]))\n"
    )
    url = (
        "postgres://postgres@127.0.0.1:5432/dpb_suite"
        "?connect_params=tests.connect_hooks.pool_user_password"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=server_env(DPB_TEST_PG_URL=url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [False, True, "PoolConfig"]
