"""The statement scan of transaction-scoped release, statement by statement.

:func:`django_poolbackend.pinning.session_use` is plain string work, so these
tests need no server; tests/test_transaction_release.py runs the same kinds of
statements on the real servers and reads which session ran them.
"""

from __future__ import annotations

import pytest

from django_poolbackend import pinning
from django_poolbackend.pinning import session_use, shown_statement

PINNING = [
    # PostgreSQL
    ("postgresql", "SET search_path TO app", False, "set"),
    ("postgresql", "  -- a comment\n  set timezone = 'UTC'", False, "set"),
    ("postgresql", "/* c */ SET SESSION AUTHORIZATION app", False, "set"),
    ("postgresql", "SET ROLE app", True, "set"),
    ("postgresql", "SET search_path TO app", True, "set"),  # outlives the transaction
    ("postgresql", "RESET ALL", False, "set"),
    ("postgresql", "SELECT set_config('app.tenant', 'x', false)", False, "set"),
    ("postgresql", "SELECT set_config('app.tenant', 'x', true)", False, "set"),
    ("postgresql", "LISTEN jobs", False, "listen"),
    ("postgresql", "PREPARE q AS SELECT 1", False, "prepare"),
    ("postgresql", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", True, "cursor_with_hold"),
    ("postgresql", "CREATE TEMP TABLE t (id int)", False, "temporary_table"),
    ("postgresql", "CREATE TEMPORARY VIEW v AS SELECT 1", False, "temporary_table"),
    ("postgresql", "CREATE LOCAL TEMP TABLE t (id int)", False, "temporary_table"),
    ("postgresql", "SELECT * INTO TEMP t FROM x", False, "temporary_table"),
    ("postgresql", "CREATE TABLE pg_temp.t (id int)", False, "temporary_table"),
    ("postgresql", "SELECT pg_advisory_lock(1)", False, "advisory_lock"),
    ("postgresql", "SELECT pg_advisory_lock_shared(1)", False, "advisory_lock"),
    ("postgresql", "SELECT pg_try_advisory_lock(1, 2)", False, "advisory_lock"),
    ("postgresql", "SELECT nextval('s')", False, "sequence"),
    ("postgresql", "SELECT setval('s', 10)", False, "sequence"),
    ("postgresql", "SELECT currval('s')", False, "sequence"),
    ("postgresql", "SELECT LASTVAL ()", False, "sequence"),
    ("postgresql", "DO $$ BEGIN PERFORM 1; END $$", False, "procedure"),
    ("postgresql", "CALL p()", False, "procedure"),
    ("postgresql", "LOAD 'auto_explain'", False, "procedure"),
    ("postgresql", b"SET search_path TO app", False, "set"),
    # MySQL / MariaDB
    ("mysql", "SET @x = 1", False, "set"),
    ("mysql", "SET NAMES utf8mb4", False, "set"),
    ("mysql", "SET SESSION sql_mode = ''", False, "set"),
    ("mysql", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", False, "set"),
    ("mysql", "SET autocommit = 0", False, "set"),
    ("mysql", "SELECT @x", False, "user_variable"),
    ("mysql", "SELECT id INTO @x FROM t LIMIT 1", False, "user_variable"),
    ("mysql", "SELECT GET_LOCK('n', 1)", False, "named_lock"),
    ("mysql", "SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1", False, "found_rows"),
    ("mysql", "SELECT FOUND_ROWS()", False, "found_rows"),
    ("mysql", "SELECT LAST_INSERT_ID()", False, "last_insert_id"),
    ("mysql", "SELECT ROW_COUNT()", False, "last_insert_id"),
    ("mysql", "LOCK TABLES t WRITE", False, "lock_tables"),
    ("mysql", "FLUSH TABLES WITH READ LOCK", False, "lock_tables"),
    ("mysql", "USE other", False, "use"),
    ("mysql", "PREPARE s FROM 'SELECT 1'", False, "prepare"),
    ("mysql", "CREATE TEMPORARY TABLE t (id int)", False, "temporary_table"),
    ("mysql", "CALL p()", False, "procedure"),
    ("mysql", "XA START 'x'", False, "procedure"),
    ("mysql", "HANDLER t OPEN", False, "procedure"),
    # SQLite
    ("sqlite", "PRAGMA foreign_keys = OFF", False, "pragma"),
    ("sqlite", "ATTACH DATABASE 'x.db' AS x", False, "attach"),
    ("sqlite", "CREATE TEMP TABLE t (id int)", False, "temporary_table"),
    ("sqlite", "SELECT last_insert_rowid()", False, "last_insert_id"),
    ("sqlite", "SELECT changes()", False, "last_insert_id"),
]

NOT_PINNING = [
    ("postgresql", 'SELECT "a"."id" FROM "a" WHERE "a"."data" @> %s', False),
    ("postgresql", 'SELECT "a"."lastval", "a"."currval" FROM "a"', False),
    ("postgresql", "SET LOCAL statement_timeout = 1000", True),
    ("postgresql", "SET CONSTRAINTS ALL IMMEDIATE", True),
    ("postgresql", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", True),
    ("postgresql", "SELECT set_config('app.tenant', 'x', true)", True),
    ("postgresql", "SELECT pg_advisory_xact_lock(1)", True),
    ("postgresql", "DECLARE c CURSOR FOR SELECT 1", True),
    ("postgresql", 'CREATE TABLE "app_model" ("id" bigint NOT NULL)', False),
    ("postgresql", 'INSERT INTO "a" ("v") VALUES (%s) RETURNING "a"."id"', False),
    ("postgresql", "SAVEPOINT s1", True),
    ("postgresql", 'UPDATE "a" SET "v" = %s WHERE "a"."id" = %s', False),
    ("postgresql", 'SELECT "a"."id" FROM "a" FOR UPDATE', True),
    ("mysql", "SELECT @@SQL_AUTO_IS_NULL", False),
    ("mysql", "SELECT VERSION(), @@sql_mode, @@default_storage_engine", False),
    ("mysql", "SELECT 'someone@example.com'", False),
    ("mysql", "SET STATEMENT max_statement_time=1 FOR SELECT 1", False),
    ("mysql", "UPDATE `a` SET `v` = %s WHERE `a`.`id` = %s", False),
    ("mysql", "SELECT `a`.`id` FROM `a` WHERE JSON_EXTRACT(`a`.`data`, %s) = %s", False),
    ("mysql", "FLUSH TABLES", False),
    ("sqlite", 'SELECT "a"."id" FROM "a" WHERE "a"."v" = %s', False),
    ("sqlite", 'CREATE TABLE "template" ("id" integer)', False),
]


@pytest.mark.parametrize(
    ("vendor", "sql", "in_transaction", "reason"), PINNING, ids=[str(p[1])[:48] for p in PINNING]
)
def test_a_statement_with_session_state_names_its_reason(
    vendor: str, sql: str, in_transaction: bool, reason: str
) -> None:
    assert session_use(sql, vendor, in_transaction) == reason


@pytest.mark.parametrize(
    ("vendor", "sql", "in_transaction"), NOT_PINNING, ids=[p[1][:48] for p in NOT_PINNING]
)
def test_statements_whose_effect_ends_with_the_transaction_do_not_pin(
    vendor: str, sql: str, in_transaction: bool
) -> None:
    assert session_use(sql, vendor, in_transaction) is None


def test_a_statement_that_is_not_text_pins_as_unscannable() -> None:
    class Composed:
        pass

    assert session_use(Composed(), "postgresql", False) == pinning.UNSCANNABLE


def test_another_vendor_gets_the_strictest_rules() -> None:
    assert session_use("SET x = 1", "oracle", False) == "set"


def test_the_statement_shown_for_a_pin_has_its_literals_masked_and_is_short() -> None:
    shown = shown_statement("SET app.api_key = 's3cr''et'  ,\n  x = 'y'" + " " * 10 + "z" * 300)
    assert "s3cr" not in shown and "'…'" in shown
    assert "\n" not in shown
    assert len(shown) == 200 and shown.endswith("…")


@pytest.mark.parametrize(
    ("vendor", "sql", "reads"),
    [
        ("postgresql", "SELECT lastval()", True),
        ("postgresql", "SELECT currval('s')", True),
        ("postgresql", "SELECT nextval('s')", False),
        ("postgresql", "SELECT setval('s', 1)", False),
        ("mysql", "SELECT LAST_INSERT_ID()", True),
        ("mysql", "SELECT LAST_INSERT_ID(42)", False),
        ("mysql", "SELECT FOUND_ROWS()", True),
        ("mysql", "SELECT SQL_CALC_FOUND_ROWS * FROM t", False),
        ("mysql", "SELECT ROW_COUNT()", True),
        ("sqlite", "SELECT last_insert_rowid()", True),
    ],
)
def test_a_reader_of_earlier_state_is_told_from_the_statement_that_sets_it(
    vendor: str, sql: str, reads: bool
) -> None:
    assert session_use(sql, vendor, False) in pinning.MAY_READ_EARLIER_STATE
    assert pinning.reads_earlier_state(sql, vendor) is reads
