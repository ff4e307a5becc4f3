"""Settings of the demo project: the database comes from DATABASE_URL.

(unset)                                     SQLite in .demo/dpb_demo.sqlite3 (no server)
DATABASE_URL=sqlite:///relative/path.sqlite3   (relative to the working directory)
DATABASE_URL=sqlite:////absolute/path.sqlite3
DATABASE_URL=postgres://postgres@127.0.0.1:5432/dpb_demo
DATABASE_URL=mysql://root@127.0.0.1:3306/dpb_demo

Query parameters go to POOL (``?max_size=8``). DPB_STOCK_ENGINE=1 swaps in Django's
own engine for the same vendor, without a pool (the demo's comparison run).
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
if os.environ.get("DPB_DEMO_COUNT_DIR"):
    # ./dev demo: each Gunicorn worker counts the connections it opens.
    INSTALLED_APPS += ["testproject.demo.ConnectionCounter"]

ENGINES = {
    "postgres": "django_poolbackend.postgresql",
    "postgresql": "django_poolbackend.postgresql",
    "mysql": "django_poolbackend.mysql",
    "mariadb": "django_poolbackend.mysql",
    "sqlite": "django_poolbackend.sqlite3",
}
DEFAULT_PORTS = {"django_poolbackend.postgresql": 5432, "django_poolbackend.mysql": 3306}
#: Django's own engine for each of ours: what the demo compares against.
STOCK_ENGINES = {
    "django_poolbackend.postgresql": "django.db.backends.postgresql",
    "django_poolbackend.mysql": "django.db.backends.mysql",
    "django_poolbackend.sqlite3": "django.db.backends.sqlite3",
}
#: The demo's embedded database: in the repository's .demo/ (git-ignored), which
#: ``python -m testproject.demo createdb`` makes.
DEMO_SQLITE = BASE_DIR.parent / ".demo" / "dpb_demo.sqlite3"
#: Two Gunicorn processes write to one file. WAL lets reads run beside the one
#: writer; BEGIN IMMEDIATE takes the write lock when a transaction starts, so a
#: second writer waits for it (up to ``timeout`` seconds) instead of failing with
#: "database is locked" when its read lock can't be upgraded mid-transaction.
SQLITE_OPTIONS = {
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
}


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
    if engine == "django_poolbackend.sqlite3":
        return sqlite_database(unquote(parts.path.removeprefix("/")), pool, **extra)
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


def sqlite_database(path: str | Path, pool: dict | None = None, **extra) -> dict:
    """A pooled SQLite entry; the test database stays Django's in-memory one."""
    if not str(path):
        raise ValueError(
            "DATABASE_URL names no SQLite file: use sqlite:///relative/path.sqlite3 "
            "or sqlite:////absolute/path.sqlite3"
        )
    return {
        "ENGINE": "django_poolbackend.sqlite3",
        "NAME": str(path),
        "OPTIONS": dict(SQLITE_OPTIONS),
        "CONN_MAX_AGE": 0,
        "POOL": {"max_size": 4, **(pool or {})},
        **extra,
    }


def stock_engine(database: dict) -> dict:
    """The same database through Django's own engine, which opens a connection per
    request (CONN_MAX_AGE=0, Django's default)."""
    stock = {key: value for key, value in database.items() if key != "POOL"}
    stock["ENGINE"] = STOCK_ENGINES[database["ENGINE"]]
    stock["CONN_MAX_AGE"] = 0
    return stock


def _number(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


DATABASES = {
    "default": (
        database_from_url(os.environ["DATABASE_URL"])
        if os.environ.get("DATABASE_URL")
        else sqlite_database(DEMO_SQLITE)
    )
}
if os.environ.get("DPB_STOCK_ENGINE") == "1":
    DATABASES["default"] = stock_engine(DATABASES["default"])

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
    "loggers": {
        "django_poolbackend": {
            "handlers": ["console"],
            # The demo sets WARNING: the pools' INFO lines would cut its progress line.
            "level": os.environ.get("DPB_LOG_LEVEL", "INFO"),
        }
    },
}
