"""A django-debug-toolbar panel: what this request did with the pools, and the pools.

Add ``"django_poolbackend.panels.PoolPanel"`` to ``DEBUG_TOOLBAR_PANELS`` (that
module is the panel's public path; the class lives here, beside the recorder). Every
figure is recorded with ``record_stats`` as plain JSON values, so a request
replayed from the toolbar's store (history panel, ``render_panel``) shows the same.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

try:
    from debug_toolbar.panels import Panel
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "django_poolbackend.panels needs django-debug-toolbar; install it with "
        "pip install 'django-poolbackend[debug-toolbar]'."
    ) from exc

from .. import process
from .. import settings as pool_settings
from ..aliases import pooled_aliases
from . import recorder

_IDENTITY = ("alias", "pid", "vendor", "host", "port", "database", "user")
_CONFIG = tuple(f.name for f in fields(pool_settings.PoolConfig))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _pairs(items: list[list[str]]) -> list[list[str]]:
    """[[k, v], ...] as rows of two key/value pairs, so the tables stay short."""
    rows = []
    for i in range(0, len(items), 2):
        row = items[i] + (items[i + 1] if i + 1 < len(items) else ["", ""])
        rows.append(row)
    return rows


def _text(value: Any) -> str:
    """One cell: nested figures (a timing summary, closes by reason) on one line."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    if value is None:
        return "None"
    return str(value)


class PoolPanel(Panel):
    """Per request and alias: checkouts, waits, new connections, pings, resets and
    the server's session ids; and this process's pool figures and settings."""

    is_async = True
    title = "Connection pool"
    nav_title = "Pool"
    template = "django_poolbackend/panel.html"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recording: tuple[recorder.Recorder, Any] | None = None

    @property
    def nav_subtitle(self) -> str:
        stats = self.get_stats()
        return (
            f"{_plural(stats.get('checkouts', 0), 'checkout')}, "
            f"{_plural(stats.get('new_connections', 0), 'new connection')}"
        )

    @classmethod
    def run_checks(cls) -> list[Any]:
        from django.apps import apps
        from django.core import checks

        if apps.is_installed("django_poolbackend"):
            return []
        return [
            checks.Error(
                "django_poolbackend.panels.PoolPanel is in DEBUG_TOOLBAR_PANELS but "
                "'django_poolbackend' is not in INSTALLED_APPS, so its template can't be found.",
                hint="Add 'django_poolbackend' to INSTALLED_APPS.",
                id="django_poolbackend.E005",
            )
        ]

    # The recorder is live between these two calls, which the toolbar makes around
    # the rest of the request in one context (a thread, or one asyncio task whose
    # context asgiref copies into sync_to_async threads).

    def enable_instrumentation(self) -> None:
        if self._recording is None:
            self._recording = recorder.start(self._late_return)

    def disable_instrumentation(self) -> None:
        if self._recording is not None:
            rec, token = self._recording
            try:
                recorder.deactivate(token)
            finally:
                rec.finish()

    def generate_stats(self, request: Any, response: Any) -> None:
        rec = self._recording[0] if self._recording is not None else None
        self.record_stats(self._collect(rec))

    def _late_return(self, rec: recorder.Recorder) -> None:
        # Django returns connections at request_finished, after the toolbar stored
        # this panel; the content (fetched later) then shows the returns too.
        self.record_stats(self._collect(rec))

    def _collect(self, rec: recorder.Recorder | None) -> dict[str, Any]:
        from django.db import connections

        import django_poolbackend

        per_request = rec.snapshot() if rec is not None else {}
        request_rows = [{"alias": alias, **entry} for alias, entry in per_request.items()]
        pools = []
        pid = None
        aliases = pooled_aliases()
        # Pools made outside the settings (wrappers built by hand) are this
        # process's pools too.
        aliases += [a for a in list(process.pools) if a not in aliases]
        for alias in aliases:
            settings_dict = connections.settings.get(alias) or {}
            snapshot = django_poolbackend.pool_stats(alias)
            pid = snapshot.get("pid", pid)
            if settings_dict:
                _, config = pool_settings.prepare(settings_dict, alias)
            else:
                config = pool_settings.PoolConfig(
                    **{k: snapshot[k] for k in _CONFIG if k in snapshot}
                )
            if isinstance(config, pool_settings.PoolConfig):
                config_values = config.as_dict()
                error = None
            else:
                config_values = {}
                error = str(config)
            config_rows = [[k, _text(v)] for k, v in config_values.items()]
            identity = {k: snapshot[k] for k in _IDENTITY if k in snapshot and k != "alias"}
            identity.setdefault("database", settings_dict.get("NAME") or "")
            identity.setdefault("user", settings_dict.get("USER") or "")
            identity["engine"] = settings_dict.get("ENGINE", "")
            figures = {
                k: v for k, v in snapshot.items() if k not in _IDENTITY and k not in _CONFIG
            }
            pools.append(
                {
                    "alias": alias,
                    # Whether this process has made the alias's pool yet (every
                    # snapshot has a size, zero or not, so it cannot tell).
                    "open": _has_pool(alias),
                    "identity_rows": [[k, _text(v)] for k, v in identity.items()],
                    "figure_rows": _pairs([[k, _text(v)] for k, v in figures.items()]),
                    "config_rows": _pairs(config_rows),
                    "error": error,
                    "figures": figures,
                    "config": config_values,
                }
            )
        return {
            "pid": pid,
            "checkouts": sum(row["checkouts"] for row in request_rows),
            "new_connections": sum(row["new_connections"] for row in request_rows),
            "requests": request_rows,
            "pools": pools,
            "recorded": rec is not None,
        }


def _has_pool(alias: str) -> bool:
    """Whether this process has a pool of its own for *alias*."""
    pool = process.pools.get(alias)
    return pool is not None and pool.pid == os.getpid()
