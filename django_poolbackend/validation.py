"""The engines' backend validation: the pool's system checks without the app.

Django asks each database's wrapper for its ``validation`` object in two places of
``manage.py check --database ALIAS`` (and of ``migrate``): ``check()`` once per
alias named, and ``check_field()`` for every model field it checks against that
database (Django 6.1 does the latter in every ``check``). Both run whether or not
``django_poolbackend`` is in INSTALLED_APPS, so the engines use a validation class
made by :func:`pooled_validation` over the stock one:

- When the package's checks are not in Django's registry (no app, and no pooled
  engine imported while Django set up: see :func:`checks.register_during_setup`),
  ``check()`` also returns the package's own checks for its alias (the static
  ones and the server one). When they are registered, they run from there, once.
- When the server can't be reached, ``W003`` says why, with a hint for that
  kind of failure. Django's own ``sql_mode`` check (MySQL) is then skipped, as
  ``W003`` says nothing could be checked. Django's model checks of a MySQL
  database need the server too (field types depend on its version) and end the
  run with the driver's error, as with the stock engine; the engine adds the
  same hint to that error as a note (``check_field``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core import checks as django_checks

from . import checks

if TYPE_CHECKING:
    from django.db.backends.base.validation import BaseDatabaseValidation as _ValidationBase
else:
    _ValidationBase = object


class PooledValidationMixin(_ValidationBase):
    """Put in front of a backend's validation class (see :func:`pooled_validation`)."""

    def check(self, **kwargs: Any) -> list[Any]:
        alias = self.connection.alias
        # Read once: the registered checks, when there are any, report for
        # every alias of this run themselves.
        registered = checks.registered()
        messages: list[Any] = []
        if not registered:
            messages.extend(own_messages(alias))
        try:
            messages.extend(super().check(**kwargs))
        except Exception as exc:
            if not self._dpb_connect_failed(exc):
                raise
            if not registered and not any(
                m.id == "django_poolbackend.W003" for m in messages
            ):
                # Only when no W003 of ours says it already (the registered
                # server check, or own_messages above).
                messages.append(
                    checks.unreachable_message(alias, self.connection.settings_dict, exc)
                )
        return messages

    def check_field(self, field: Any, **kwargs: Any) -> list[Any]:
        try:
            return list(super().check_field(field, **kwargs))
        except Exception as exc:
            if self._dpb_connect_failed(exc):
                self._dpb_explain(exc)
            raise

    def _dpb_explain(self, exc: Exception) -> None:
        """Add W003's hint to a connect failure that stops Django's own checks.

        On MySQL/MariaDB, Django's model checks ask the server (field types and
        index support depend on its version) and are not ours to skip: the run
        ends with the driver's error, as with the stock engine. The note under it
        says what that error means and what to do.
        """
        if getattr(exc, "_dpb_explained", False):
            return
        alias = self.connection.alias
        message = checks.unreachable_message(alias, self.connection.settings_dict, exc)
        exc.add_note(
            f"django_poolbackend: Django's own checks of DATABASES[{alias!r}] need the "
            f"server and could not connect ({message.id}). {message.hint}"
        )
        exc._dpb_explained = True  # type: ignore[attr-defined]

    def _dpb_connect_failed(self, exc: Exception) -> bool:
        """Whether *exc* is a database error raised because the wrapper could not
        connect (it has no connection afterwards), not one of a working session."""
        from django.db.utils import Error

        wrapper = self.connection
        driver_error = getattr(getattr(wrapper, "Database", None), "Error", Error)
        return isinstance(exc, (Error, driver_error)) and wrapper.connection is None


def own_messages(alias: str) -> list[django_checks.CheckMessage]:
    """The package's checks for one alias, as the registered checks give them
    (static first, then the server check)."""
    from django.conf import settings
    from django.db import connections

    raw = settings.DATABASES.get(alias) or connections[alias].settings_dict
    messages = checks.pool_settings_messages({alias: raw})
    messages.extend(checks.check_server_limits(databases=[alias]))
    return messages


_classes: dict[type, type] = {}


def pooled_validation(stock: type) -> type:
    """The validation class for a pooled wrapper whose stock wrapper validates with
    *stock*: ``validation_class = pooled_validation(base.DatabaseWrapper.validation_class)``."""
    cls = _classes.get(stock)
    if cls is None:
        cls = _classes.setdefault(
            stock,
            type(
                "DatabaseValidation",
                (PooledValidationMixin, stock),
                {
                    "__module__": __name__,
                    "__qualname__": f"pooled_validation({stock.__qualname__})",
                },
            ),
        )
    return cls
