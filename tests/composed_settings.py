"""tests.settings plus the alias ``composed``: the PostgreSQL test database through
a third-party backend pooled by composition (``tests/composed_prometheus``), an
ENGINE outside ``django_poolbackend.``, for the subprocess tests of the tools
that list pooled aliases."""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES as _SUITE

DATABASES = {
    **_SUITE,
    "composed": {
        **_SUITE["default"],
        "ENGINE": "tests.composed_prometheus",
        "OPTIONS": {"application_name": "dpb-composed"},
        "TEST": {"MIRROR": "default"},
    },
}
