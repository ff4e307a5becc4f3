"""MySQL 8+ and MariaDB 10.5+ (mysqlclient), pooled."""

from django.core.exceptions import ImproperlyConfigured

try:
    from django.db.backends.mysql import base
except ImproperlyConfigured as exc:
    raise ImproperlyConfigured(
        f"{exc}\nInstall the driver with: pip install 'django-poolbackend[mysql]'"
    ) from exc

from ..mixin import PooledDatabaseWrapperMixin


class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper):
    pass
