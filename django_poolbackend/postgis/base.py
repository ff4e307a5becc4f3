"""PostGIS (GeoDjango on PostgreSQL), pooled."""

from django.core.exceptions import ImproperlyConfigured

try:
    from django.contrib.gis.db.backends.postgis import base
except ImproperlyConfigured as exc:
    raise ImproperlyConfigured(
        f"{exc}\nGeoDjango needs psycopg ('pip install \"django-poolbackend[postgresql]\"') "
        "and the GDAL and GEOS libraries (Debian: apt install libgdal32 libgeos-c1v5)."
    ) from exc

from .. import process
from ..checks import register_during_setup
from ..mixin import PooledDatabaseWrapperMixin
from ..validation import pooled_validation


class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper):
    # The pool's system checks run through Django's backend validation too.
    validation_class = pooled_validation(base.DatabaseWrapper.validation_class)

    def prepare_database(self) -> None:
        # GeoDjango registers the geometry types on each connection when it is
        # opened, and finds none while the extension does not exist yet. A pooled
        # connection opened before migrate's CREATE EXTENSION would keep serving
        # without them, so when this call creates the extension, the pool's
        # current connections are retired (idle now, this one when returned).
        with self.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'")
            existed = cursor.fetchone() is not None
        super().prepare_database()
        if not existed:
            pool = process.pools.get(self.alias)
            if pool is not None:
                pool.drain()


# Imported while Django sets up (defining a model imports the default alias's
# engine), the engine registers the pool's checks itself: every `manage.py check`
# then runs them, with or without django_poolbackend in INSTALLED_APPS.
register_during_setup()
