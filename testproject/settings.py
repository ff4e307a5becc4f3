"""Settings of the demo project: the database comes from DATABASE_URL.

DATABASE_URL=postgres://postgres@127.0.0.1:5432/dpb_demo   (the default)
DATABASE_URL=mysql://root@127.0.0.1:3306/dpb_demo
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "testproject-insecure-key")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_poolbackend",
    "testproject.shop",
]
MIDDLEWARE: list[str] = []

ENGINES = {
    "postgres": "django_poolbackend.postgresql",
    "postgresql": "django_poolbackend.postgresql",
    "mysql": "django_poolbackend.mysql",
    "mariadb": "django_poolbackend.mysql",
}
DEFAULT_PORTS = {"django_poolbackend.postgresql": 5432, "django_poolbackend.mysql": 3306}


def database_from_url(url: str, **extra) -> dict:
    """A DATABASES entry from a URL; query parameters go to POOL (max_size=4)."""
    parts = urlsplit(url)
    try:
        engine = ENGINES[parts.scheme]
    except KeyError:
        raise ValueError(
            f"DATABASE_URL scheme {parts.scheme!r} is not supported; "
            f"use one of {', '.join(sorted(ENGINES))}"
        ) from None
    pool = {key: _number(value) for key, value in parse_qsl(parts.query)}
    name = unquote(parts.path.lstrip("/"))
    return {
        "ENGINE": engine,
        "NAME": name,
        # Our test databases keep the dpb_ prefix of everything this project makes.
        "TEST": {"NAME": "dpb_test_" + name.removeprefix("dpb_")},
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or DEFAULT_PORTS[engine]),
        "CONN_MAX_AGE": 0,
        "POOL": {"max_size": 4, **pool},
        **extra,
    }


def _number(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dpb_demo")
    )
}

if os.environ.get("DJANGO_DEBUG_TOOLBAR") == "1":
    # django-debug-toolbar with the pool panel (shown only with DJANGO_DEBUG=1 and
    # to INTERNAL_IPS); off by default so the demo stays as it is.
    INSTALLED_APPS += ["django.contrib.staticfiles", "debug_toolbar"]
    MIDDLEWARE = ["debug_toolbar.middleware.DebugToolbarMiddleware", *MIDDLEWARE]
    TEMPLATES = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
        }
    ]
    STATIC_URL = "static/"
    INTERNAL_IPS = ["127.0.0.1"]
    DEBUG_TOOLBAR_PANELS = [
        "debug_toolbar.panels.history.HistoryPanel",
        "debug_toolbar.panels.versions.VersionsPanel",
        "debug_toolbar.panels.timer.TimerPanel",
        "debug_toolbar.panels.sql.SQLPanel",
        "django_poolbackend.panels.PoolPanel",
    ]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_poolbackend": {"handlers": ["console"], "level": "INFO"}},
}
