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

from ..checks import register_during_setup
from ..mixin import PooledDatabaseWrapperMixin
from ..validation import pooled_validation


class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper):
    # The pool's system checks run through Django's backend validation too.
    validation_class = pooled_validation(base.DatabaseWrapper.validation_class)


# Imported while Django sets up (defining a model imports the default alias's
# engine), the engine registers the pool's checks itself: every `manage.py check`
# then runs them, with or without django_poolbackend in INSTALLED_APPS.
register_during_setup()
