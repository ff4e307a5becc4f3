"""Settings for Django's own test suite (``tests/runtests.py --settings=settings_compat``).

One module for every configuration, chosen by ``DPB_COMPAT_CONFIG`` (set by
``run_django_tests.py``), so the stock and the pooled runs differ in ENGINE and POOL
only and every worker process that ``--parallel`` starts sees the same settings.
"""

import os

CONFIGS = {
    # name: (vendor, engine, POOL or None)
    "postgresql-stock": ("postgresql", "django.db.backends.postgresql", None),
    # No POOL key at all: exactly what a user who only changes ENGINE gets.
    "postgresql-pooled": ("postgresql", "django_poolbackend.postgresql", None),
    "postgresql-pooled-max1": ("postgresql", "django_poolbackend.postgresql", {"max_size": 1}),
    "mysql-stock": ("mysql", "django.db.backends.mysql", None),
    "mysql-pooled": ("mysql", "django_poolbackend.mysql", None),
    "mysql-pooled-max1": ("mysql", "django_poolbackend.mysql", {"max_size": 1}),
}

CONFIG = os.environ.get("DPB_COMPAT_CONFIG", "")
if CONFIG not in CONFIGS:
    raise RuntimeError(
        f"DPB_COMPAT_CONFIG={CONFIG!r}: expected one of {', '.join(sorted(CONFIGS))}"
    )
VENDOR, ENGINE, POOL = CONFIGS[CONFIG]
# Separate databases per configuration and Django series, so runs on two venvs or two
# configurations never share a test database.
_TAG = os.environ.get("DPB_COMPAT_TAG", "")


def _database(role: str) -> dict:
    name = f"dpb_dj_{CONFIG.replace('-', '_')}{_TAG}_{role}"
    # The ports can be moved (e.g. to a private server instance) without editing this file.
    if VENDOR == "postgresql":
        port = int(os.environ.get("DPB_COMPAT_PG_PORT", "5432"))
        db = {"ENGINE": ENGINE, "NAME": name, "USER": "postgres", "HOST": "127.0.0.1", "PORT": port}
    else:
        port = int(os.environ.get("DPB_COMPAT_MYSQL_PORT", "3306"))
        db = {
            "ENGINE": ENGINE,
            "NAME": name,
            "USER": "root",
            "PASSWORD": "",
            "HOST": "127.0.0.1",
            "PORT": port,
        }
        # A server's default may be latin1; Django's tests store non-Latin text.
        db["TEST"] = {"CHARSET": "utf8mb4"}
    if POOL is not None:
        db["POOL"] = dict(POOL)
    return db


# Everything else exactly as Django's own default test settings for this version
# (tests/test_sqlite.py of the sdist, importable because runtests.py runs from tests/):
# e.g. 5.2 pins DEFAULT_AUTO_FIELD to AutoField, 6.0 doesn't.
from test_sqlite import *  # noqa: E402,F401,F403

DATABASES = {"default": _database("default"), "other": _database("other")}
# Records every test's outcome for the stock-versus-pooled comparison.
TEST_RUNNER = "compat_runner.RecordingRunner"
