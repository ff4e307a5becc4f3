"""Gunicorn settings for the preload test: the master proves, as it exits, that the
connections it held across every fork still work."""

import json
import os


def on_exit(server):
    from tests.preload_wsgi import backend_ids

    try:
        result = {"ok": True, "ids": backend_ids()}
    except Exception as exc:  # reported to the test, which fails on it
        result = {"ok": False, "error": repr(exc)}
    with open(os.environ["DPB_MASTER_FILE"] + ".exit", "w") as f:
        json.dump(result, f)
