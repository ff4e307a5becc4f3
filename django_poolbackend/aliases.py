"""Which database aliases are pooled.

By the wrapper's class, never by the ``ENGINE`` name: a third-party backend
composed with :class:`~django_poolbackend.mixin.PooledDatabaseWrapperMixin` lives
in the user's own module and is pooled all the same. The mixin is imported when
asked, so importing this module imports no backend.
"""

from __future__ import annotations

from typing import Any


def is_pooled_alias(alias: str) -> bool:
    """Whether this process's connection for *alias* is pooled.

    Building the wrapper (the first ``connections[alias]`` of a thread) does no
    I/O. An alias whose backend does not load is not pooled here; Django reports
    it when the alias is used.
    """
    from django.db import connections

    from .mixin import PooledDatabaseWrapperMixin

    try:
        wrapper = connections[alias]
    except Exception:
        return False
    return isinstance(wrapper, PooledDatabaseWrapperMixin)


def pooled_aliases() -> list[str]:
    """The pooled aliases of ``DATABASES``, in settings order."""
    from django.db import connections

    return [alias for alias in connections.settings if is_pooled_alias(alias)]


def is_pooled_engine(engine: Any) -> bool:
    """Whether the ``DatabaseWrapper`` an ``ENGINE`` names is pooled: for a
    DATABASES entry that need not be one of this process's connections (a dict
    handed to the system checks, the snapshot directory's project hash)."""
    from django.db.utils import load_backend

    from .mixin import PooledDatabaseWrapperMixin

    try:
        cls = load_backend(str(engine or "")).DatabaseWrapper
    except Exception:  # Django's own checks report an ENGINE that doesn't load.
        return False
    return isinstance(cls, type) and issubclass(cls, PooledDatabaseWrapperMixin)
