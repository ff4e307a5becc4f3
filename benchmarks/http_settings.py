"""testproject's settings with the database of one benchmark configuration.

``DPB_BENCH_DATABASE`` holds the whole ``DATABASES["default"]`` entry as JSON (the
parent builds it; it never contains a password here: the benchmark servers use
trust / an empty password).
"""

import json
import os

from testproject.settings import *  # noqa: F403

DATABASES = {"default": json.loads(os.environ["DPB_BENCH_DATABASE"])}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_poolbackend": {"handlers": ["console"], "level": "WARNING"}},
}
