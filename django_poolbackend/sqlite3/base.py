"""SQLite (the standard library's sqlite3), pooled for database files.

With ``CONN_MAX_AGE=0`` Django opens, sets up (``PRAGMA foreign_keys``,
``legacy_alter_table``, the user's ``init_command``, its SQL functions) and closes
a SQLite connection for every request; a pooled file database pays that once per
connection.

In-memory databases (``:memory:``, ``mode=memory`` URIs, which is what Django's
test runner uses by default) are not pooled: each connection to ``:memory:`` is
a database of its own, a shared-cache one lives only while a connection to it is
open, and Django never closes them (``close()`` is a no-op there) and relies on a
forked test worker keeping its copy. The stock behaviour is the right one, so
they get exactly that.
"""

from __future__ import annotations

from django.db.backends.sqlite3 import base
from django.utils.asyncio import async_unsafe

from ..checks import register_during_setup
from ..mixin import PooledDatabaseWrapperMixin
from ..validation import pooled_validation


class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper):
    # The pool's system checks run through Django's backend validation too.
    validation_class = pooled_validation(base.DatabaseWrapper.validation_class)

    # reset="full" is refused where every POOL setting is read
    # (django_poolbackend.settings), so manage.py check reports it too.

    @async_unsafe
    def connect(self) -> None:
        # Decided at every connect, not once: the test runner renames NAME on a
        # live wrapper (a file database becomes the in-memory test database).
        if self.is_in_memory_db():
            base.DatabaseWrapper.connect(self)
        else:
            super().connect()

    def _dpb_forget_inherited(self) -> None:
        # A forked child owns a private copy of an in-memory database, and
        # Django's parallel test runner counts on the child using it.
        if self._dpb_slot is None and self.is_in_memory_db():
            return
        super()._dpb_forget_inherited()


# Imported while Django sets up (defining a model imports the default alias's
# engine), the engine registers the pool's checks itself: every `manage.py check`
# then runs them, with or without django_poolbackend in INSTALLED_APPS.
register_during_setup()
