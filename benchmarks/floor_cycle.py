"""The floor under any pool: Django's request cycle with a checkout that costs nothing.

    python -m benchmarks.floor_cycle persistent|floor|ours [postgresql|mysql] [--cycles N]

``floor`` replaces the wrapper's ``connect()``/``_close()`` with the least a
connection-per-request engine can do (hand over one kept connection, give nothing
back), so what remains is Django's own per-request work: ``close()``,
``ensure_connection()`` with its error wrapper, ``close_if_unusable_or_obsolete()``.
It is a measuring device for ``benchmarks/notes.md`` (on this machine the floor is
within noise of the persistent stock engine), not a configuration anyone could run.

``--cycles N`` runs exactly N cycles untimed, for an instruction count that the
machine's load cannot move: the difference between two ``valgrind --tool=callgrind``
runs (N = 2,000 and 12,000) over 10,000 is the instructions per cycle.
"""

from __future__ import annotations

import sys
import timeit
import types


def main() -> None:
    args = sys.argv[1:]
    cycles = None
    if "--cycles" in args:
        at = args.index("--cycles")
        cycles = int(args[at + 1])
        del args[at : at + 2]
    mode = args[0]
    vendor = args[1] if len(args) > 1 else "postgresql"
    import django
    from django.conf import settings

    from .children import database_settings

    config = "stock, persistent" if mode == "persistent" else "django_poolbackend"
    settings.configure(
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=[],
        DATABASES={"default": database_settings(vendor, config)},
    )
    django.setup()
    from django.db import close_old_connections, connections

    wrapper = connections["default"]
    if mode == "floor":
        wrapper.ensure_connection()
        kept = wrapper.connection

        def connect(self: object) -> None:
            wrapper.connection = kept
            wrapper.close_at = 0.0

        def _close(self: object) -> None:
            pass

        wrapper.connect = types.MethodType(connect, wrapper)  # type: ignore[method-assign]
        wrapper._close = types.MethodType(_close, wrapper)  # type: ignore[method-assign]

    def cycle() -> None:
        close_old_connections()
        wrapper.ensure_connection()
        close_old_connections()

    if cycles is not None:
        for _ in range(cycles):
            cycle()
        return
    for _ in range(2000):
        cycle()
    best = min(timeit.repeat(cycle, number=50_000, repeat=7)) / 50_000 * 1e6
    print(f"{mode} ({vendor}): {best:.2f} µs per cycle (best of 7 × 50,000)")


if __name__ == "__main__":
    main()
