"""Settings for the test suite: both vendors, pooled, plus a stock alias to compare.

The suite uses databases and roles of its own (``dpb_`` prefix) on the machine's
shared servers. ``DPB_USE_TEST_DB=1`` points a subprocess (a Gunicorn started by a
test) at the test databases pytest-django created.
"""

import os

from testproject.settings import *  # noqa: F403
from testproject.settings import database_from_url

PG_URL = os.environ.get("DPB_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/dpb_suite")
MYSQL_URL = os.environ.get("DPB_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/dpb_suite")

# Two suite runs on one machine at once (e.g. two checkouts) need their own names.
SUFFIX = os.environ.get("DPB_TEST_DB_SUFFIX", "")

DATABASES = {
    "default": database_from_url(
        PG_URL,
        OPTIONS={"application_name": os.environ.get("DPB_APPLICATION_NAME", "dpb-suite")},
        TEST={"NAME": "dpb_test_pg" + SUFFIX},
    ),
    "mysql": database_from_url(MYSQL_URL, TEST={"NAME": "dpb_test_my" + SUFFIX}),
}
# The stock engine on the same test database, to show what pooling changes.
DATABASES["stock_pg"] = {
    **DATABASES["default"],
    "NAME": DATABASES["default"]["NAME"],
    "ENGINE": "django.db.backends.postgresql",
    "OPTIONS": {"application_name": "dpb-suite-stock"},
    "TEST": {"MIRROR": "default"},
}
del DATABASES["stock_pg"]["POOL"]

if os.environ.get("DPB_USE_TEST_DB") == "1":
    # Under pytest-xdist, pytest-django gives each worker test databases of its
    # own, named after it (dpb_test_pg_gw0); a server a worker starts gets the id
    # in DPB_TEST_DB_WORKER (tests/conftest.py's server_env()).
    WORKER = os.environ.get("DPB_TEST_DB_WORKER", "")
    for db in DATABASES.values():
        if "NAME" in db.get("TEST", {}):
            db["NAME"] = db["TEST"]["NAME"] + (f"_{WORKER}" if WORKER else "")
    DATABASES["stock_pg"]["NAME"] = DATABASES["default"]["NAME"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django_poolbackend": {"level": "INFO"}},
}
