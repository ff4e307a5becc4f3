"""Which database aliases are pooled.

By the wrapper's class, never by the ``ENGINE`` name: a third-party backend
composed with :class:`~django_poolbackend.mixin.PooledDatabaseWrapperMixin` lives
in the user's own module and is pooled all the same. The class answers through its
``is_pooled_backend`` attribute, which the mixin sets, so this module never imports
the mixin and importing it imports no backend.
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

    try:
        wrapper = connections[alias]
    except Exception:
        return False
    return getattr(type(wrapper), "is_pooled_backend", False) is True


def pooled_aliases() -> list[str]:
    """The pooled aliases of ``DATABASES``, in settings order."""
    from django.db import connections

    return [alias for alias in connections.settings if is_pooled_alias(alias)]


def is_pooled_engine(engine: Any) -> bool:
    """Whether the ``DatabaseWrapper`` an ``ENGINE`` names is pooled: for a
    DATABASES entry that need not be one of this process's connections (a dict
    handed to the system checks, the snapshot directory's project hash)."""
    from django.db.utils import load_backend

    try:
        cls = load_backend(str(engine or "")).DatabaseWrapper
    except Exception:  # Django's own checks report an ENGINE that doesn't load.
        return False
    return isinstance(cls, type) and getattr(cls, "is_pooled_backend", False) is True
