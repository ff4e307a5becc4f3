"""A WSGI module whose import runs queries: the Gunicorn master (with --preload)
holds open pooled connections when it forks its workers.

Writes the master's pid and server-side connection ids to $DPB_MASTER_FILE.
"""

import json
import os

from django.db import connections

from testproject.wsgi import application  # noqa: F401  (sets Django up)

SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}


def backend_ids() -> dict:
    ids = {}
    for alias in ("default", "mysql"):
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute(SQL[connection.vendor])
            ids[alias] = cursor.fetchone()[0]
    return ids


with open(os.environ["DPB_MASTER_FILE"], "w") as f:
    json.dump({"pid": os.getpid(), "ids": backend_ids()}, f)
