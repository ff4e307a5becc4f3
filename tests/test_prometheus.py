"""The Prometheus collector, read back with prometheus_client's own parser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from django_poolbackend import publish

from .conftest import MYSQL_POOL_USER, ROOT

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])


def scrape(directory: Path) -> dict[str, list]:
    from django_poolbackend.contrib.prometheus import PoolCollector

    registry = CollectorRegistry()
    registry.register(PoolCollector(directory))
    text = generate_latest(registry).decode()
    assert MYSQL_POOL_USER[1] not in text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list, name: str, **labels: str) -> float:
    matches = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (name, labels, samples)
    return matches[0]


def test_collector_reports_each_process_pool(make_pooled, vendor: str, tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    with override_settings(DJANGO_POOLBACKEND_STATS_DIR=str(directory)):
        pooled = make_pooled(vendor, max_size=3)
        held, other = pooled.wrapper(), pooled.wrapper()
        pooled.backend_id(held)
        for _ in range(4):
            pooled.backend_id(other)
            other.close()
        publish.publish(force=True)
        families = scrape(directory)
        me = {"alias": pooled.alias, "pid": str(os.getpid())}
        conns = families["django_pool_connections"]
        assert value(conns, "django_pool_connections", state="in_use", **me) == 1
        assert value(conns, "django_pool_connections", state="idle", **me) == 1
        assert value(families["django_pool_max_size"], "django_pool_max_size", **me) == 3
        assert value(families["django_pool_waiting"], "django_pool_waiting", **me) == 0
        checkouts = families["django_pool_checkouts"]
        assert value(checkouts, "django_pool_checkouts_total", **me) == 5
        assert value(families["django_pool_connects"], "django_pool_connects_total", **me) == 2
        closed = families["django_pool_closed"]
        assert value(closed, "django_pool_closed_total", reason="broken", **me) == 0
        wait = families["django_pool_checkout_wait_seconds"]
        assert value(wait, "django_pool_checkout_wait_seconds_count", **me) == 5
        assert value(wait, "django_pool_checkout_wait_seconds_bucket", le="+Inf", **me) == 5
        assert value(wait, "django_pool_checkout_wait_seconds_bucket", le="0.0001", **me) == 5
        held.close()
        publish.withdraw()
        assert "django_pool_connections" not in scrape(directory) or not [
            s for s in scrape(directory)["django_pool_connections"] if s.labels["pid"] == me["pid"]
        ]


def test_a_refused_directory_is_logged_once_and_the_scrape_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A statistics directory others may write to: no pool is reported from it,
    /metrics still answers (every family, no sample), one error names it."""
    directory = tmp_path / "open"
    directory.mkdir()
    os.chmod(directory, 0o777)
    from django_poolbackend.contrib.prometheus import PoolCollector

    caplog.set_level("WARNING", logger="django_poolbackend")
    registry = CollectorRegistry()
    registry.register(PoolCollector(directory))
    for _ in range(3):  # three scrapes of one endpoint
        text = generate_latest(registry).decode()
        families = {f.name: f.samples for f in text_string_to_metric_families(text)}
        assert families["django_pool_connections"] == []
        assert families["django_pool_checkout_wait_seconds"] == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "Pool statistics: the Prometheus collector reads nothing: UntrustedDirectory: The "
        f"pool statistics directory {directory} is writable by its group and other users "
        "(mode 0777), so they could plant or replace files in it; only its owner may write "
        "to it: run chmod go-w on it, or set settings.DJANGO_POOLBACKEND_STATS_DIR to a "
        "directory of yours."
    ]


def test_missing_prometheus_client_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import django; django.setup()\n"
        "try:\n"
        "    import django_poolbackend.contrib.prometheus\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert "ImproperlyConfigured" in out.stdout, out.stderr
    assert "pip install django-poolbackend[prometheus]" in out.stdout
