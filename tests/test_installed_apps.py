"""An app installed by a test (``modify_settings(INSTALLED_APPS=...)``) sets up every
connection it is handed, as with the stock engine.

``django.contrib.postgres`` registers its hstore adapter in ``ready()`` on the
connections that wrappers hold and, through ``connection_created``, on connections
opened later. A connection idle in a pool is neither; Django's own ``postgres_tests``
(each test class installs the app) failed on one with ``POOL={"max_size": 1}``.
"""

from __future__ import annotations

import pytest
from django.contrib.postgres.signals import get_hstore_oids
from django.db import connections
from django.test.utils import modify_settings

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "stock_pg"])


@pytest.mark.parametrize("alias", ["default", "stock_pg"])
def test_an_app_installed_later_sets_up_the_connections_it_is_handed(alias):
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS hstore")
    # Pooled: the connection goes back idle, set up without contrib.postgres.
    connection.close()
    # What CreateExtension does after creating the type: forget the cached "no hstore".
    get_hstore_oids.cache_clear()
    with modify_settings(INSTALLED_APPS={"append": "django.contrib.postgres"}):
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s::hstore -> 'a'", [{"a": "b"}])
            value = cursor.fetchone()[0]
        connection.close()
    get_hstore_oids.cache_clear()
    assert value == "b"
