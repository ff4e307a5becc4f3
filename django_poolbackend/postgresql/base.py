"""PostgreSQL (psycopg 3, or psycopg2 where Django picks it), pooled."""

from django.core.exceptions import ImproperlyConfigured

try:
    from django.db.backends.postgresql import base
except ImproperlyConfigured as exc:
    raise ImproperlyConfigured(
        f"{exc}\nInstall a driver with: pip install 'django-poolbackend[postgresql]'"
    ) from exc

from ..mixin import PooledDatabaseWrapperMixin


class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper):
    pass
