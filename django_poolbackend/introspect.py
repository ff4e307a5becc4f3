"""What a database server says about itself, read over a connection the caller opened.

The system checks (W002, E004, E005, E006) and ``manage.py poolstats --server`` ask
the server the same questions: how many connections this application may open, how
many sessions it has open by state, and whether a connection proxy such as PgBouncer
stands in between. Both ask through this module, so the limit a check warns about is
the limit the command shows. The module opens no connection and imports nothing from
Django: the caller dials one outside any pool (with the parameters a pooled
connection of the alias gets) and closes it, and every function here only runs
queries on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: PgBouncer pool modes in which a server connection changes between transactions.
TRANSACTION_POOLING = ("transaction", "statement")

#: The states PostgreSQL's ``pg_stat_activity`` reports, in the four the views count.
_STATES = {
    "idle": "idle",
    "active": "active",
    "idle in transaction": "idle_in_transaction",
    "idle in transaction (aborted)": "idle_in_transaction",
}


@contextmanager
def dialled(wrapper: Any, params: dict[str, Any]) -> Iterator[Any]:
    """A driver connection of *wrapper*'s backend opened with *params*, closed after.

    It is dialled directly (``get_new_connection``), never checked out of a pool,
    so asking leaves no pool started and no connection checked out. An error on
    closing is dropped: the facts have been read by then, and the server ends
    the session anyway when the socket goes.
    """
    conn = wrapper.get_new_connection(params)
    try:
        yield conn
    finally:
        try:
            conn.close()
        except Exception:
            pass


def server_facts(wrapper: Any, params: dict[str, Any], database: str, user: str) -> dict[str, Any]:
    """What the system checks compare the pool settings with, asked over a
    connection of its own: :func:`server_limits`, and on PostgreSQL what a proxy
    in between says about its pool mode (``pgbouncer``, None when there is no
    proxy) and psycopg's ``prepare_threshold`` of the connection."""
    with dialled(wrapper, params) as conn:
        facts = server_limits(conn, wrapper.vendor)
        if wrapper.vendor == "postgresql":
            facts["pgbouncer"] = (
                pgbouncer_admin(wrapper.Database.connect, params, database, user)
                if facts["proxied"]
                else None
            )
            facts["prepare_threshold"] = getattr(conn, "prepare_threshold", None)
        return facts


def rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    """Every row *sql* returns on the DB-API connection *conn*, with the cursor closed."""
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def behind_proxy(client_pid: int | None, server_pid: int | None, server_version: str = "") -> bool:
    """Whether a connection proxy stands between the client and the server.

    A proxy answers the startup with a backend key of its own (PgBouncer's is
    random), so the pid the client library was given differs from the one the
    server reports with ``pg_backend_pid()``. PgBouncer also names itself in the
    ``server_version`` it reports, which tells even when the pids cannot be read.
    """
    if "bouncer" in server_version.lower():
        return True
    return client_pid is not None and server_pid is not None and client_pid != server_pid


def server_limits(conn: Any, vendor: str) -> dict[str, Any]:
    """The server's connection limits for this application, as seen on *conn*.

    The result always has ``limits``, a list of ``(count, description)`` pairs a
    pool's worst case must stay within, and ``connection_limit``, the server's
    own limit for an ordinary role (the first pair's count). PostgreSQL adds the
    settings it was computed from, and ``proxied``; MySQL adds
    ``max_user_connections``. A vendor without a server (SQLite) has no limits.
    """
    if vendor == "postgresql":
        return _postgresql_limits(conn)
    if vendor == "mysql":
        return _mysql_limits(conn)
    return {"limits": [], "connection_limit": None}


def _postgresql_limits(conn: Any) -> dict[str, Any]:
    # reserved_connections exists from PostgreSQL 16 on; current_setting(..., true)
    # answers NULL on older servers, which count it as 0. Both reserves are taken
    # off max_connections, because an ordinary role can use neither.
    ((max_conn, su_reserved, reserved, role_limit, db_limit, server_pid),) = rows(
        conn,
        "SELECT current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "coalesce(current_setting('reserved_connections', true), '0')::int, "
        "(SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user), "
        "(SELECT datconnlimit FROM pg_database WHERE datname = current_database()), "
        "pg_backend_pid()",
    )
    # The query opened a transaction unless the connection is in autocommit;
    # ending it keeps the session out of "idle in transaction" (in autocommit
    # the rollback does nothing).
    conn.rollback()
    usable = max_conn - su_reserved - reserved
    how = f"max_connections {max_conn} - superuser_reserved_connections {su_reserved}"
    if reserved:
        how += f" - reserved_connections {reserved}"
    limits = [(usable, f"the server allows {usable} ({how})")]
    if role_limit is not None and role_limit >= 0:
        limits.append((role_limit, f"the role's CONNECTION LIMIT is {role_limit}"))
    if db_limit is not None and db_limit >= 0:
        limits.append((db_limit, f"the database's CONNECTION LIMIT is {db_limit}"))
    info = getattr(conn, "info", None)
    version = ""
    if info is not None and hasattr(info, "parameter_status"):
        version = info.parameter_status("server_version") or ""
    return {
        "limits": limits,
        "connection_limit": usable,
        "max_connections": max_conn,
        "superuser_reserved_connections": su_reserved,
        "reserved_connections": reserved,
        "role_connection_limit": None if role_limit is None or role_limit < 0 else role_limit,
        "proxied": behind_proxy(getattr(info, "backend_pid", None), server_pid, version),
    }


def _mysql_limits(conn: Any) -> dict[str, Any]:
    ((max_conn, max_user),) = rows(conn, "SELECT @@max_connections, @@max_user_connections")
    max_conn = int(max_conn)
    limits = [(max_conn, f"the server allows {max_conn} (max_connections)")]
    user_limit = int(max_user) if max_user and int(max_user) > 0 else None
    if user_limit is not None:
        limits.append((user_limit, f"the account may open {user_limit} (max_user_connections)"))
    return {
        "limits": limits,
        "connection_limit": max_conn,
        "max_connections": max_conn,
        "max_user_connections": user_limit,
    }


# -- sessions of this application ---------------------------------------------------


def session_group(name: str) -> dict[str, Any]:
    """An empty count of the sessions named *name*.

    ``dpb:<alias>:<pid>`` is the application_name the pooled engine gives its
    sessions, so such a name also tells which alias and process own them.
    """
    pid = alias = None
    parts = name.split(":")
    if len(parts) >= 3 and parts[0] == "dpb" and parts[-1].isdigit():
        alias, pid = ":".join(parts[1:-1]), int(parts[-1])
    return {"name": name, "alias": alias, "pid": pid, "idle": 0, "active": 0,
            "idle_in_transaction": 0, "other": 0}  # fmt: skip


def sessions(conn: Any, vendor: str) -> dict[str, Any]:
    """This application's other sessions on the server, by name and state.

    PostgreSQL groups them by application_name (each process of a pool has its
    own); MySQL has no such name, so its sessions are those of the same account
    and database, in one group. ``server_sessions`` is every client session of
    the server, for scale, when the server says.
    """
    if vendor == "postgresql":
        return _postgresql_sessions(conn)
    return _mysql_sessions(conn)


def _postgresql_sessions(conn: Any) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    found = rows(
        conn,
        "SELECT application_name, state, count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND usename = current_user "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "GROUP BY 1, 2 ORDER BY 1, 2",
    )
    for name, state, count in found:
        group = groups.setdefault(name, session_group(name))
        group[_STATES.get(state, "other")] += count
    ((total,),) = rows(
        conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    )
    return _counted(groups, server_sessions=total)


def _mysql_sessions(conn: Any) -> dict[str, Any]:
    where = (
        "FROM information_schema.PROCESSLIST p WHERE p.USER = SUBSTRING_INDEX(USER(), '@', 1) "
        "AND p.DB = DATABASE() AND p.ID <> CONNECTION_ID()"
    )
    try:
        found = rows(
            conn,
            "SELECT p.COMMAND, EXISTS(SELECT 1 FROM information_schema.INNODB_TRX t "
            "WHERE t.trx_mysql_thread_id = p.ID) " + where,
        )
    except Exception:
        # Without the PROCESS privilege InnoDB's transaction list is hidden, so
        # whether an idle session holds a transaction cannot be told.
        found = rows(conn, "SELECT p.COMMAND, NULL " + where)
    ((user, database),) = rows(conn, "SELECT SUBSTRING_INDEX(USER(), '@', 1), DATABASE()")
    group = session_group(f"{user}@{database}")
    for command, in_trx in found:
        if command == "Sleep":
            group["idle_in_transaction" if in_trx else "idle"] += 1
        else:
            group["active"] += 1
    ((connected,),) = rows(
        conn,
        "SELECT (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
        "WHERE VARIABLE_NAME = 'THREADS_CONNECTED')",
    )
    return _counted(
        {group["name"]: group} if found else {},
        server_sessions=int(connected) if connected is not None else None,
    )


def _counted(groups: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    listed = list(groups.values())
    totals = {
        state: sum(g[state] for g in listed)
        for state in ("idle", "active", "idle_in_transaction", "other")
    }
    return {**extra, "sessions": listed, "totals": totals}


# -- PgBouncer's admin console ------------------------------------------------------


def pgbouncer_admin(
    connect: Callable[..., Any], params: dict[str, Any], database: str, user: str
) -> dict[str, Any]:
    """PgBouncer's own view, from its admin console (``SHOW POOLS``, ``SHOW CONFIG``).

    *connect* is the driver's ``connect`` and *params* the parameters of the
    connection that found the proxy; the console is the proxy's ``pgbouncer``
    database. Only users listed in PgBouncer's ``admin_users`` or ``stats_users``
    may ask, so for anyone else the pool mode stays unknown (``None``).
    """
    admin_params = {
        k: v for k, v in params.items() if k not in ("context", "cursor_factory", "database")
    }
    admin_params["dbname"] = "pgbouncer"
    try:
        conn = connect(**admin_params)
    except Exception:
        return {"mode": None}
    try:
        conn.autocommit = True
        pools = simple_query(conn, "SHOW POOLS")
        config = dict((row[0], row[1]) for row in simple_query(conn, "SHOW CONFIG"))
    except Exception:
        return {"mode": None}
    finally:
        try:
            conn.close()
        except Exception:
            pass
    mode = None
    for row in pools:
        # database, user, ..., pool_mode (the last column).
        if row[0] == database and (not user or row[1] == user):
            mode = row[-1]
            break
    mode = mode or config.get("pool_mode")
    prepared = config.get("max_prepared_statements") or "0"
    max_client = config.get("max_client_conn")
    return {
        "mode": mode,
        "prepared_statements": prepared.isdigit() and int(prepared) > 0,
        "max_client_conn": int(max_client) if max_client and max_client.isdigit() else None,
    }


def simple_query(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    """The rows of *sql* sent with the simple query protocol, the only one
    PgBouncer's admin console speaks (psycopg 3 would otherwise use the extended
    protocol; psycopg2 always uses the simple one)."""
    pgconn = getattr(conn, "pgconn", None)
    if pgconn is None:
        return rows(conn, sql)
    result = pgconn.exec_(sql.encode())
    if result.status != 2:  # TUPLES_OK
        raise conn.OperationalError(f"{sql} failed")
    return [
        tuple(
            None if (v := result.get_value(r, c)) is None else v.decode()
            for c in range(result.nfields)
        )
        for r in range(result.ntuples)
    ]
