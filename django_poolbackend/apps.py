from django.apps import AppConfig


class PoolBackendConfig(AppConfig):
    """Optional: adds the system checks and the management commands."""

    name = "django_poolbackend"
    verbose_name = "Connection pool"

    def ready(self) -> None:
        from django.core import checks

        from .checks import check_pool_settings, check_server_limits

        # Untagged: a static look at settings, so plain `manage.py check` runs it.
        checks.register(check_pool_settings)
        # Talks to the server: only with `check --database ALIAS` (and migrate).
        checks.register(check_server_limits, checks.Tags.database)
