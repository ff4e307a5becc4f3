"""System checks: ``manage.py check`` reports bad pool settings before a request does.

Ids are stable and never reused.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import conf

POOLED_ENGINE_PREFIX = "django_poolbackend."


def check_pool_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return pool_settings_messages(settings.DATABASES)


def pool_settings_messages(databases: dict[str, dict]) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for alias, db in databases.items():
        if not str(db.get("ENGINE", "")).startswith(POOLED_ENGINE_PREFIX):
            continue
        _, config = conf.prepare(db, alias)
        if isinstance(config, ImproperlyConfigured):
            errors.append(
                checks.Error(
                    str(config),
                    hint="Fix the pool settings; the documentation's configuration "
                    "reference lists every key with its type and default.",
                    id="django_poolbackend.E001",
                )
            )
        max_age = db.get("CONN_MAX_AGE", 0)
        if max_age != 0:
            errors.append(
                checks.Warning(
                    f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is {max_age!r} with a "
                    "pooled ENGINE: each thread keeps its connection out of the "
                    "pool between requests.",
                    hint="Set CONN_MAX_AGE to 0 so connections return to the pool "
                    "at the end of each request; the pool keeps them open. Under ASGI "
                    "a non-zero value exhausts the pool (each request's thread ends "
                    "holding its connection).",
                    id="django_poolbackend.W001",
                )
            )
    return errors
