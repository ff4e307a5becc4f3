"""The public import path of the mixin that pools a Django ``DatabaseWrapper``.

Composed backends import :class:`PooledDatabaseWrapperMixin` from here, so this
path stays; the class lives in :mod:`django_poolbackend.wrapper` (Django's hooks)
and :mod:`django_poolbackend.checkout` (the steps they take).
"""

from __future__ import annotations

from .checkout import application_name
from .wrapper import PooledDatabaseWrapperMixin

__all__ = ["PooledDatabaseWrapperMixin", "application_name"]
