"""Time (and optionally profile) Django's request cycle for one configuration.

    python -m benchmarks.profile_cycle postgresql django_poolbackend [--cprofile]

The configuration names are those of ``benchmarks.children.DJANGO_CONFIGS``. This is
the tool behind the "what the profiles show" notes: a plain ``timeit`` of 20,000
cycles three times, then, with ``--cprofile``, the functions of 50,000 cycles by
their own time.
"""

from __future__ import annotations

import argparse
import timeit


def main() -> None:
    from .children import DJANGO_CONFIGS, database_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vendor", choices=["postgresql", "mysql"])
    parser.add_argument("config", choices=sorted(DJANGO_CONFIGS))
    parser.add_argument("--cprofile", action="store_true", help="also print a cProfile")
    args = parser.parse_args()

    import django
    from django.conf import settings

    settings.configure(
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=[],
        DATABASES={"default": database_settings(args.vendor, args.config)},
    )
    django.setup()
    from django.db import close_old_connections, connection

    def cycle() -> None:
        close_old_connections()
        connection.ensure_connection()
        close_old_connections()

    for _ in range(1000):
        cycle()
    n = 20_000
    for _ in range(3):
        print(f"{args.config}: {timeit.timeit(cycle, number=n) / n * 1e6:.2f} µs per cycle")
    if args.cprofile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        for _ in range(50_000):
            cycle()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
