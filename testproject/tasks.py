"""Tasks of the testproject's Celery app (see testproject/celery_app.py).

Neither task closes its connection: Celery's Django fix-up does that after every
task, as it does for any Django project.
"""

from __future__ import annotations

import os

from celery import shared_task
from django.db import connections

SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}


@shared_task(name="testproject.tasks.backend_id")
def backend_id(alias: str = "default") -> tuple[int, int]:
    """(this process's pid, the server-side id of the connection the task used)."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(SQL[connection.vendor])
        ident = cursor.fetchone()[0]
    return os.getpid(), ident


@shared_task(name="testproject.tasks.pool_figures")
def pool_figures(aliases: list[str]) -> dict:
    """This process's pool figures, taken before this task touches any database:
    ``in_use`` is 0 if the previous task's connection went back to the pool."""
    from django_poolbackend import pool_stats

    return {
        "pid": os.getpid(),
        "pools": {alias: pool_stats(alias) for alias in aliases},
        "wrapper_holds": {alias: connections[alias].connection is not None for alias in aliases},
    }
