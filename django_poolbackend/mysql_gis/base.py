"""GeoDjango on MySQL 8+ and MariaDB 10.5+ (mysqlclient), pooled.

The server's spatial types are built in; the client needs the GDAL and GEOS
libraries, as GeoDjango always does.
"""

from django.core.exceptions import ImproperlyConfigured

try:
    from django.contrib.gis.db.backends.mysql import base
except ImproperlyConfigured as exc:
    raise ImproperlyConfigured(
        f"{exc}\nGeoDjango needs mysqlclient ('pip install \"django-poolbackend[mysql]\"') "
        "and the GDAL and GEOS libraries (Debian: apt install libgdal32 libgeos-c1v5)."
    ) from exc

from ..mixin import PooledDatabaseWrapperMixin


class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper):
    pass
