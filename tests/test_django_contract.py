"""Copies of Django's code that must stay in step with the installed Django.

``PooledDatabaseWrapperMixin.connect()`` does what ``BaseDatabaseWrapper.connect()``
does to the wrapper's own state, without dialling the server, and its one-time
set-up of a new physical connection does what the rest of Django's ``connect()``
does. Both are copies; these tests read the installed Django's source and fail,
naming the difference, when a Django release changes what its ``connect()``
resets.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from django.db.backends.base.base import BaseDatabaseWrapper

from django_poolbackend.mixin import PooledDatabaseWrapperMixin

from .test_state_leakage import state_env  # noqa: F401 - the fixture, shared


def _steps(function: Callable[..., Any]) -> list[str]:
    """In source order, what *function* does to ``self``: ``name`` for an
    assignment to ``self.name`` and ``name()`` for a call of ``self.name(...)``,
    plus ``connection_created.send()`` for the signal."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    found.append((node.lineno, node.col_offset, target.attr))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "connection_created"):
                name = node.func.attr if owner.id == "self" else "connection_created.send"
                found.append((node.lineno, node.col_offset, name + "()"))
    return [step for _, _, step in sorted(found)]


#: Django's steps that the mixin's connect() does differently on purpose: it
#: checks a connection out instead of opening one (the connection is then set up
#: once, by _dpb_initialise(), when the pool opens it).
_OPENING = ["get_connection_params()", "get_new_connection()", "connection"]
_SETUP = ["set_autocommit()", "init_connection_state()", "connection_created.send()"]


def _django_connect() -> list[str]:
    return _steps(BaseDatabaseWrapper.connect)


def test_the_resets_of_connect_match_the_installed_djangos() -> None:
    django = _django_connect()
    opening_at = django.index("get_connection_params()")
    resets = django[:opening_at]
    after = [step for step in django[opening_at:] if step not in _OPENING + _SETUP]
    ours = _steps(PooledDatabaseWrapperMixin.connect)
    # Ours, in order, from check_settings() up to the pool lookup.
    ours_resets = [step for step in ours if step in set(resets)]
    assert ours_resets == resets, (
        "Django's BaseDatabaseWrapper.connect() resets, in this order, "
        f"{resets}, but PooledDatabaseWrapperMixin.connect() resets {ours_resets}: "
        "a Django release changed what connect() resets; copy the change into the "
        "mixin's connect() (django_poolbackend/wrapper.py)."
    )
    assert set(after) <= set(ours), (
        f"Django's connect() now also does {sorted(set(after) - set(ours))} after "
        "opening the connection; the mixin's connect() must do it too on every checkout."
    )


def test_djangos_connection_setup_is_what_a_new_pooled_connection_gets() -> None:
    django = _django_connect()
    setup = [step for step in django if step in _SETUP]
    opening_at = django.index("get_new_connection()")
    between = [
        step
        for step in django[opening_at + 1 : django.index(_SETUP[-1]) + 1]
        if step != "connection"
    ]
    assert between == setup == _SETUP, (
        f"Django's connect() sets a new connection up with {between}, the pool's "
        f"one-time set-up (_dpb_initialise) with {_SETUP}: a Django release changed "
        "it; copy the change into _dpb_initialise()."
    )
    ours = _steps(PooledDatabaseWrapperMixin._dpb_initialise)
    assert ours == _SETUP, ours


def _body_without_our_mark(function: Callable[..., Any]) -> str:
    """*function*'s body as an AST dump, without its docstring and without the
    statement of ours that marks a failed check."""
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(function))).body
    assert isinstance(node, ast.FunctionDef)
    body = [
        statement
        for statement in node.body
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))
    ]

    class Unmark(ast.NodeTransformer):
        def visit_If(self, branch: ast.If) -> ast.AST | None:
            self.generic_visit(branch)
            if "_dpb_slot" in ast.dump(branch.test):
                return None
            return branch

    module = Unmark().visit(ast.Module(body=body, type_ignores=[]))
    return ast.dump(module, include_attributes=False)


def test_the_health_check_is_djangos_with_the_failure_marked() -> None:
    theirs = _body_without_our_mark(BaseDatabaseWrapper.close_if_health_check_failed)
    ours = _body_without_our_mark(PooledDatabaseWrapperMixin.close_if_health_check_failed)
    assert ours == theirs, (
        "Django's BaseDatabaseWrapper.close_if_health_check_failed() changed; copy the "
        "change into the mixin's (django_poolbackend/wrapper.py), which only adds the "
        "mark that keeps a connection failing the check out of the pool."
    )
    assert "_dpb_failed_check" in inspect.getsource(
        PooledDatabaseWrapperMixin.close_if_health_check_failed
    )


def test_the_step_reader_sees_assignments_and_calls() -> None:
    # Without this a parsing slip could make the tests above compare two empty lists.
    django = _django_connect()
    assert django[0] == "check_settings()"
    assert "in_atomic_block" in django
    assert "run_on_commit" in django
    assert "connection_created.send()" in django


# -- _dpb_clean's fast path is the slow path's answer, sooner ------------------------


def _fast_path_params() -> list[Any]:
    from .test_state_leakage import KINDS, PG

    return [
        pytest.param(kind, id=f"{'pg' if kind.alias == PG else 'my'}-{kind.name}") for kind in KINDS
    ]


def _takes_the_fast_path(wrapper: Any, slot: Any) -> bool:
    """Whether ``_dpb_clean`` returns by its fast path for the wrapper's state now.

    The slow path starts by asking the driver for the transaction state and the
    fast path never does, so a spy on that question tells them apart. A fast
    return changes nothing, so the slow path can then be asked about the very
    same state (:func:`_slow_verdict`); a slow one is left to finish (it rolls
    back).
    """
    driver = wrapper._dpb_driver
    with mock.patch.object(driver, "state", wraps=driver.state) as state:
        verdict = wrapper._dpb_clean(slot)
    if state.called:
        return False
    assert verdict == (None, False)
    return True


def _slow_verdict(wrapper: Any, slot: Any) -> Any:
    """``_dpb_clean``'s answer with its fast path turned away: the driver's
    one-call answer is made "can't tell", which sends it the long way."""
    with mock.patch.object(wrapper._dpb_driver, "idle_in_autocommit", return_value=False):
        return wrapper._dpb_clean(slot)


@pytest.mark.django_db(transaction=True, databases=["default", "mysql"])
@pytest.mark.usefixtures("state_env")
@pytest.mark.parametrize("kind", _fast_path_params())
def test_the_fast_path_of_clean_agrees_with_the_slow_path(make_pooled: Any, kind: Any) -> None:
    """For every transaction and session state the state-leakage tests produce, on
    both vendors: when the fast path of ``_dpb_clean`` calls a returned connection
    clean, the slow path, asked about the very same state, finds nothing to roll
    back or reset; and a state with a transaction open never takes the fast path."""
    from .test_state_leakage import Request, _start, state_pool

    pooled = state_pool(make_pooled, kind.alias, "rollback")
    wrapper = pooled.wrapper()
    a = _start(pooled, wrapper)
    kind.change(a, 1)
    slot = wrapper._dpb_slot
    assert slot is not None
    fast = _takes_the_fast_path(wrapper, slot)
    if fast:
        assert not wrapper.in_atomic_block
        assert _slow_verdict(wrapper, slot) == (None, False), kind.name
        # Nothing was rolled back: a session-level change is still there.
        if kind.changed is not None and kind.session:
            assert kind.read(a) == kind.changed(1)
    if not kind.session:
        # A transaction left open (or failed, or autocommit turned off) must be
        # rolled back by the slow path; the fast path must never skip that.
        assert not fast, kind.name
    a.end()
    b = Request(pooled, wrapper)
    assert b.bid == a.bid
    b.end()


@pytest.mark.django_db(transaction=True, databases=["default", "mysql"])
@pytest.mark.usefixtures("state_env")
@pytest.mark.parametrize("alias", ["default", "mysql"])
def test_an_idle_connection_takes_the_fast_path_and_the_slow_path_agrees(
    make_pooled: Any, alias: str
) -> None:
    # The state every ordinary request leaves behind: without this the test above
    # could pass with a fast path that never applies.
    from .test_state_leakage import _start, state_pool

    pooled = state_pool(make_pooled, alias, "rollback")
    wrapper = pooled.wrapper()
    a = _start(pooled, wrapper)
    a.run("SELECT 1")
    slot = wrapper._dpb_slot
    assert _takes_the_fast_path(wrapper, slot) is True
    assert _slow_verdict(wrapper, slot) == (None, False)
    a.end()


@pytest.mark.django_db(transaction=True, databases=["default", "mysql"])
def test_a_replaced_is_usable_failing_the_health_check_keeps_it_out_of_the_pool(
    make_pooled: Any, vendor: str
) -> None:
    # What Django's ConnectionHealthChecksTests do: is_usable() replaced on the
    # instance, so the mixin's own is_usable() never sees the verdict. The mark
    # set where Django acts on it still keeps the connection out of the pool.
    pooled = make_pooled(vendor, max_size=1)
    wrapper = pooled.wrapper()
    wrapper.settings_dict["CONN_HEALTH_CHECKS"] = True
    wrapper.settings_dict["CONN_MAX_AGE"] = None  # kept between "requests"
    first = pooled.backend_id(wrapper)
    wrapper.close_if_unusable_or_obsolete()  # a request boundary: check again
    with mock.patch.object(wrapper, "is_usable", return_value=False):
        wrapper.ensure_connection()  # nothing to check yet: no cursor asked
        with wrapper.cursor():
            pass  # Django's health check fails and closes; a new connection follows
    second = pooled.backend_id(wrapper)
    wrapper.close()
    assert second != first
    stats = pooled.stats()
    assert stats["closed_by_reason"]["broken"] == 1
    assert stats["connects"] == 2
