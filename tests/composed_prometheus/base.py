"""A third-party backend pooled by composition: django-prometheus's PostgreSQL
wrapper (connection and query counters) with the pool in front of it.

ENGINE = "tests.composed_prometheus". docs/engines.md shows the same four lines.
"""

from django_prometheus.db.backends.postgresql import base

from django_poolbackend.mixin import PooledDatabaseWrapperMixin


class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper):
    pass
