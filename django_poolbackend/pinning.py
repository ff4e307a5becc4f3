"""Which statements leave state in their server session: the scan behind pinning.

With ``POOL["release"] = "transaction"`` a connection goes back to the pool
between transactions, so consecutive statements of one request may run on
different server sessions. That is invisible to a statement whose effect lives
in its transaction, and wrong for one whose effect lives in the session: a ``SET``,
a temporary table, a session advisory lock, a MySQL user variable, a value such
as ``LAST_INSERT_ID()`` that a later statement reads back. :func:`session_use`
recognises those statements from their text, so that the request can stay on its
session (be *pinned*) for the rest of its life.

The list is PgBouncer's table of features that break in transaction pooling and
ProxySQL's rules for when it stops multiplexing, per vendor; the docs
(``docs/transaction-release.md``) give it in full. The scan errs towards pinning:
a false alarm costs only the pooling benefit for the rest of one request, a miss
costs correctness. It never fires on a statement Django's ORM writes for a
queryset, which is what keeps transaction release worth having.

It is plain string work (one ``lower()`` and a few substring searches for the
common statement, a regular expression only when one of them hits) and imports
nothing from Django.
"""

from __future__ import annotations

import re

#: Reasons a statement pins its session, as ``pool_stats()["pins"]`` counts them.
SET = "set"
LISTEN = "listen"
PREPARE = "prepare"
CURSOR_WITH_HOLD = "cursor_with_hold"
TEMPORARY_TABLE = "temporary_table"
ADVISORY_LOCK = "advisory_lock"
LOCK_TABLES = "lock_tables"
NAMED_LOCK = "named_lock"
USER_VARIABLE = "user_variable"
FOUND_ROWS = "found_rows"
LAST_INSERT_ID = "last_insert_id"
SEQUENCE = "sequence"
USE = "use"
PROCEDURE = "procedure"
PRAGMA = "pragma"
ATTACH = "attach"
UNSCANNABLE = "unscannable"
EXPLICIT = "explicit"

#: Reasons whose statement may read a value that an *earlier* statement left in
#: the session (``lastval()``, ``LAST_INSERT_ID()``, ``FOUND_ROWS()``); for those,
#: :func:`reads_earlier_state` tells a reader from a statement that sets the value.
MAY_READ_EARLIER_STATE = frozenset({LAST_INSERT_ID, SEQUENCE, FOUND_ROWS})

# The statement's first keyword, after whitespace and SQL comments.
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.S)

# First keywords that always pin (or pin unless an exception below says not).
_FIRST_WORD = {
    "postgresql": {
        "set": SET,
        "reset": SET,
        "listen": LISTEN,
        "prepare": PREPARE,
        "declare": CURSOR_WITH_HOLD,  # decided below: only WITH HOLD pins
        "create": TEMPORARY_TABLE,  # decided below: only TEMP/TEMPORARY pins
        "do": PROCEDURE,
        "call": PROCEDURE,
        "load": PROCEDURE,
    },
    "mysql": {
        "set": SET,
        "use": USE,
        "prepare": PREPARE,
        "lock": LOCK_TABLES,
        "flush": LOCK_TABLES,  # decided below: FLUSH TABLES ... WITH READ LOCK
        "create": TEMPORARY_TABLE,  # decided below: only TEMPORARY pins
        "handler": PROCEDURE,
        "call": PROCEDURE,
        "xa": PROCEDURE,
    },
    "sqlite": {
        "pragma": PRAGMA,
        "attach": ATTACH,
        "create": TEMPORARY_TABLE,  # decided below: only TEMP/TEMPORARY pins
    },
}

# Function calls anywhere in a statement: (cheap substring, confirming pattern,
# reason). The substring is searched in the lowered text first; the pattern runs
# only when it is there.
_CALLS = {
    "postgresql": (
        (
            "advisory_lock",
            re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\("),
            ADVISORY_LOCK,
        ),
        ("set_config", re.compile(r"\bset_config\s*\("), SET),
        ("lastval", re.compile(r"\blastval\s*\("), SEQUENCE),
        ("currval", re.compile(r"\bcurrval\s*\("), SEQUENCE),
        ("nextval", re.compile(r"\bnextval\s*\("), SEQUENCE),
        ("setval", re.compile(r"\bsetval\s*\("), SEQUENCE),
        ("dblink_connect", re.compile(r"\bdblink_connect(?:_u)?\s*\("), PROCEDURE),
        (
            "temp",
            re.compile(r"\binto\s+(?:temp|temporary|unlogged)\b|\bpg_temp\b"),
            TEMPORARY_TABLE,
        ),
    ),
    "mysql": (
        ("@", re.compile(r"(?<![@\w])@(?!@)"), USER_VARIABLE),
        ("get_lock", re.compile(r"\bget_lock\s*\("), NAMED_LOCK),
        ("found_rows", re.compile(r"\bsql_calc_found_rows\b|\bfound_rows\s*\("), FOUND_ROWS),
        ("last_insert_id", re.compile(r"\blast_insert_id\s*\("), LAST_INSERT_ID),
        ("row_count", re.compile(r"\brow_count\s*\("), LAST_INSERT_ID),
    ),
    "sqlite": (
        ("last_insert_rowid", re.compile(r"\blast_insert_rowid\s*\("), LAST_INSERT_ID),
        ("changes", re.compile(r"\b(?:total_)?changes\s*\(\s*\)"), LAST_INSERT_ID),
        ("temp.", re.compile(r"\btemp\."), TEMPORARY_TABLE),
    ),
}

_TEMPORARY = re.compile(
    r"create\s+(?:or\s+replace\s+)?(?:(?:global|local)\s+)?(?:temp|temporary)\b"
)
_WITH_HOLD = re.compile(r"\bwith\s+hold\b")
_PG_SCOPED_SET = re.compile(r"(?:set|reset)\s+(?:local|constraints|transaction)\b")
_PG_LOCAL_SET_CONFIG = re.compile(r"\bset_config\s*\([^;]*,\s*true\s*\)")
_MYSQL_STATEMENT_SET = re.compile(r"set\s+statement\b")
_MYSQL_READ_LOCK = re.compile(r"\bwith\s+read\s+lock\b")


def session_use(sql: object, vendor: str, in_transaction: bool) -> str | None:
    """The reason *sql* leaves state in its server session, or None.

    *vendor* is Django's (``postgresql``, ``mysql``, ``sqlite``); another vendor
    gets the PostgreSQL rules, the strictest about ``SET``. *in_transaction* says
    whether the statement runs inside a transaction, where PostgreSQL's ``SET
    LOCAL`` and ``set_config(…, true)`` end with it.
    """
    if isinstance(sql, bytes):
        sql = sql.decode("latin-1")
    elif not isinstance(sql, str):
        # A composed statement (psycopg.sql) can't be read without the
        # connection: assume the worst.
        return UNSCANNABLE
    rules = vendor if vendor in _FIRST_WORD else "postgresql"
    text = sql.lower()
    match = _LEADING.match(text)
    if match is not None:
        first = match.group(1)
        reason = _FIRST_WORD[rules].get(first)
        if reason is not None:
            rest = text[match.start(1) :]
            reason = _first_word_reason(rules, first, reason, rest, in_transaction)
            if reason is not None:
                return reason
    for needle, pattern, reason in _CALLS[rules]:
        if needle in text and pattern.search(text):
            if reason == SET and in_transaction and _PG_LOCAL_SET_CONFIG.search(text):
                continue  # set_config(name, value, true): ends with the transaction
            return reason
    return None


_READERS = {
    "postgresql": re.compile(r"\b(?:lastval|currval)\s*\("),
    "mysql": re.compile(r"\b(?:found_rows|last_insert_id|row_count)\s*\(\s*\)"),
    "sqlite": re.compile(r"\b(?:last_insert_rowid|(?:total_)?changes)\s*\(\s*\)"),
}


def reads_earlier_state(sql: object, vendor: str) -> bool:
    """Whether *sql* reads a value an earlier statement left in the session:
    ``lastval()`` but not ``nextval()``, ``FOUND_ROWS()`` but not
    ``SQL_CALC_FOUND_ROWS``, ``LAST_INSERT_ID()`` but not ``LAST_INSERT_ID(42)``.
    Asked only about a statement :func:`session_use` already pinned for one of
    :data:`MAY_READ_EARLIER_STATE`, so it may be slower."""
    if isinstance(sql, bytes):
        sql = sql.decode("latin-1")
    if not isinstance(sql, str):
        return False
    return bool(_READERS.get(vendor, _READERS["postgresql"]).search(sql.lower()))


def _first_word_reason(
    rules: str, first: str, reason: str, rest: str, in_transaction: bool
) -> str | None:
    """Whether a statement starting with a pinning keyword really pins."""
    if first == "create":
        return reason if _TEMPORARY.match(rest) else None
    if first == "declare":
        return reason if _WITH_HOLD.search(rest) else None
    if rules == "postgresql" and first in ("set", "reset") and _PG_SCOPED_SET.match(rest):
        # SET LOCAL, SET CONSTRAINTS and SET TRANSACTION end with the current
        # transaction; outside one they do nothing that outlives the statement.
        return None
    if rules == "mysql":
        if first == "set" and _MYSQL_STATEMENT_SET.match(rest):
            return None  # MariaDB's SET STATEMENT … FOR: this statement only
        if first == "flush":
            return reason if _MYSQL_READ_LOCK.search(rest) else None
        if first == "lock":
            return reason  # LOCK TABLES / LOCK TABLE (MariaDB: LOCK TABLE too)
    return reason


def shown_statement(sql: object, limit: int = 200) -> str:
    """The statement as the panel shows a pin's cause: string literals masked
    (a ``SET`` can carry a secret), whitespace folded, cut at *limit*."""
    if isinstance(sql, bytes):
        sql = sql.decode("latin-1", errors="replace")
    if not isinstance(sql, str):
        return f"<{type(sql).__name__}>"
    text = re.sub(r"'(?:[^']|'')*'", "'…'", sql)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
