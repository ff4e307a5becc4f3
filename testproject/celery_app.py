"""The testproject's Celery app, set up the usual Django way.

    DJANGO_SETTINGS_MODULE=testproject.settings celery -A testproject.celery_app worker

With ``DJANGO_SETTINGS_MODULE`` set, Celery installs its Django fix-up
(``celery.fixups.django``): ``django.setup()`` before the task modules are imported,
and ``close()`` on every Django connection before and after each task, which hands a
pooled connection back to the process's pool.

Environment:

- ``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``: default ``redis://127.0.0.1:6379/11``.
- ``DPB_CELERY_KEYPREFIX``: a prefix for every Redis key the broker and the result
  backend write, so a test run can find and delete exactly its own keys.
- ``DPB_CELERY_OPTIONS_POOL=1`` (tests): configure the pool of ``default`` the way a
  project coming from Django's own PostgreSQL pool does, ``OPTIONS["pool"]`` instead
  of ``POOL`` (the settings module is otherwise unchanged).
- ``DPB_CELERY_PARENT_QUERY=1`` (tests): the worker's main process queries both
  aliases before it forks its pool processes, so the children inherit open pooled
  connections (one checked out by Django's wrapper, one idle in the pool). The
  server-side ids go to ``$DPB_CELERY_PARENT_FILE`` as JSON; at shutdown the main
  process checks that its checked-out connections still answer, and writes the
  result to ``$DPB_CELERY_PARENT_FILE.exit``.
"""

from __future__ import annotations

import json
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

REDIS_URL = "redis://127.0.0.1:6379/11"


def redis_config(environ: os._Environ | dict = os.environ) -> dict:
    """Broker and result-backend settings from the environment."""
    prefix = environ.get("DPB_CELERY_KEYPREFIX", "")
    options = {"global_keyprefix": prefix} if prefix else {}
    return {
        "broker_url": environ.get("CELERY_BROKER_URL", REDIS_URL),
        "result_backend": environ.get("CELERY_RESULT_BACKEND", REDIS_URL),
        "broker_transport_options": dict(options),
        "result_backend_transport_options": dict(options),
        "broker_connection_retry_on_startup": True,
    }


if os.environ.get("DPB_CELERY_OPTIONS_POOL") == "1":
    from django.conf import settings

    _default = settings.DATABASES["default"]
    _default["OPTIONS"] = {
        **_default.get("OPTIONS", {}),
        "pool": _default.pop("POOL", None) or True,
    }

app = Celery("testproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    redis_config(),
    include=["testproject.tasks"],
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # One task at a time per child, so tasks spread over the children.
    worker_prefetch_multiplier=1,
)

SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
PARENT_ALIASES = ("default", "mysql")


def _backend_id(connection) -> int:
    with connection.cursor() as cursor:
        cursor.execute(SQL[connection.vendor])
        return cursor.fetchone()[0]


# The parent's held wrappers: checked out when the pool processes are forked.
_parent_held: dict[str, int] = {}


@signals.worker_init.connect
def _query_before_fork(**kwargs) -> None:
    """Runs in the worker's main process, after the Django fix-up's own worker_init
    (which closes Django's connections) and before the pool processes are forked."""
    if os.environ.get("DPB_CELERY_PARENT_QUERY") != "1":
        return
    import django

    django.setup()
    from django.db import connections

    ids: dict[str, list[int]] = {}
    try:
        for alias in PARENT_ALIASES:
            held = connections[alias]
            held_id = _backend_id(held)  # stays checked out across the fork
            other = connections.create_connection(alias)
            idle_id = _backend_id(other)
            other.close()  # back to the pool: idle there at fork time
            _parent_held[alias] = held_id
            ids[alias] = [held_id, idle_id]
        result: dict = {"pid": os.getpid(), "ids": ids}
    except Exception as exc:
        # Celery logs a failing worker_init receiver before logging is set up,
        # i.e. nowhere: hand the error to the test instead.
        result = {"pid": os.getpid(), "error": repr(exc)}
    with open(os.environ["DPB_CELERY_PARENT_FILE"], "w") as f:
        json.dump(result, f)


@signals.worker_shutdown.connect
def _check_parent_connections(**kwargs) -> None:
    """In the main process at shutdown: the children left our sessions alone."""
    if os.environ.get("DPB_CELERY_PARENT_QUERY") != "1" or not _parent_held:
        return
    from django.db import connections

    try:
        result = {
            "ok": True,
            "pid": os.getpid(),
            "ids": {alias: _backend_id(connections[alias]) for alias in _parent_held},
        }
    except Exception as exc:  # reported to the test, which fails on it
        result = {"ok": False, "error": repr(exc)}
    with open(os.environ["DPB_CELERY_PARENT_FILE"] + ".exit", "w") as f:
        json.dump(result, f)
