"""Settings for the SQLite engine's subprocess tests (tests/test_engines.py): the
testproject's app on a pooled SQLite database named by DPB_SQLITE_NAME."""

import os

SECRET_KEY = "dpb-sqlite-tests"
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "testproject.urls"
ALLOWED_HOSTS = ["*"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django_poolbackend", "testproject.shop"]
MIDDLEWARE: list[str] = []

_test = {"NAME": os.environ["DPB_SQLITE_TEST_NAME"]} if "DPB_SQLITE_TEST_NAME" in os.environ else {}
DATABASES = {
    "default": {
        "ENGINE": "django_poolbackend.sqlite3",
        "NAME": os.environ.get("DPB_SQLITE_NAME", ":memory:"),
        "CONN_MAX_AGE": 0,
        "POOL": {"max_size": 2},
        "TEST": _test,
    }
}
