"""The optional Django app: the system checks and the management commands.

Adding ``django_poolbackend`` to INSTALLED_APPS registers the pool's checks and
makes ``manage.py poolstats`` and ``pooldrain`` available. The pooling itself needs
no app: the engines do it, and they register the checks too when Django imports
them while it sets up.
"""

from django.apps import AppConfig


class PoolBackendConfig(AppConfig):
    """Optional: adds the system checks and the management commands.

    The checks also run without the app when the ``default`` alias is pooled
    (its engine registers them while Django sets up), and for the aliases that
    ``manage.py check --database`` names in any case (see
    :mod:`django_poolbackend.validation`).
    """

    name = "django_poolbackend"
    verbose_name = "Connection pool"

    def ready(self) -> None:
        from .checks import register_checks

        # The static check runs in every `manage.py check` (also --deploy) and
        # at runserver; the server check only with `check --database ALIAS` and
        # in migrate (see the tags in checks.py).
        register_checks()
