"""The benchmark suite's own measuring instruments (speed itself is never asserted).

The round-trip counter is what the issue-6 target "exactly one statement per
one-query request" rests on, so it is checked against configurations whose
answer is known: the stock persistent engine with CONN_HEALTH_CHECKS pings once
per request (2), the pooled engine sends only the query (1).
"""

from __future__ import annotations

import pytest

from benchmarks import common, http

from .conftest import RUN_TAG

#: Each xdist worker builds and drops the database in its own module fixture: its
#: name carries the run's suffix and the worker's id (RUN_TAG), or one worker would
#: drop it under another.
BENCH_DB = f"dpb_bench_t{RUN_TAG}"

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:4000/one/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.51ms    3.20ms  40.10ms   80.00%
    Req/Sec   765.00     80.00     0.90k    70.00%
  Latency Distribution
     50%    9.87ms
     75%   11.50ms
     90%   14.20ms
     99%  820.00us
  4590 requests in 3.00s, 0.88MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   1529.61
Transfer/sec:    299.10KB
"""


def test_parse_wrk_reads_rate_latency_and_errors():
    result = http.parse_wrk(WRK_OUTPUT)
    assert result.pop("p99_ms") == pytest.approx(0.82)  # given in µs by wrk
    assert result == {"req_per_s": 1529.61, "p50_ms": 9.87, "requests": 4590, "errors": 7}


def test_medians_skip_failed_rounds_and_keep_the_error():
    runs = [{"us": 3.0}, {"error": "exit 1: boom"}, {"us": 1.0}, {"us": 2.0}]
    assert common.medians(runs) == {"rounds_ok": 3, "rounds": 4, "us": 2.0}
    assert common.medians([{"error": "exit 1: boom"}])["error"] == "exit 1: boom"


@pytest.fixture(scope="module")
def bench_databases():
    import MySQLdb
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone():
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    my = MySQLdb.connect(host="127.0.0.1", user="root")
    my.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{BENCH_DB}`")
    yield
    my.cursor().execute(f"DROP DATABASE IF EXISTS `{BENCH_DB}`")
    my.close()
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')


@pytest.mark.postgresql
@pytest.mark.mysql
@pytest.mark.parametrize("vendor", ["postgresql", "mysql"])
@pytest.mark.parametrize(
    ("config", "expected"), [("stock, persistent", 2.0), ("django_poolbackend", 1.0)]
)
def test_round_trips_per_one_query_request(bench_databases, monkeypatch, vendor, config, expected):
    monkeypatch.setenv("DPB_BENCH_DB", BENCH_DB)
    spec = {
        "fn": "benchmarks.children:django_cycle",
        "kwargs": {"vendor": vendor, "config": config, "budget": 0.02, "requests": 30},
    }
    result = common.run_child(spec, timeout=120)
    assert "error" not in result, result.get("error")
    assert result["round_trips_per_request"] == expected
    assert any("SELECT 1" in sent for sent in result["statements"])
    if vendor == "mysql":
        # The server's own count of the one pooled session agrees (COM_PING,
        # the health check, is not a statement there).
        assert result["server_questions_per_request"] == 1.0
