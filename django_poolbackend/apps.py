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
