"""The PNGs the docs show (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def scaling(summary: dict[str, dict[int, dict]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for impl, by_threads in summary.items():
        threads = sorted(by_threads)
        top.plot(
            threads, [by_threads[t].get("ops_per_s", 0) for t in threads], marker="o", label=impl
        )
        bottom.plot(
            threads, [by_threads[t].get("p99_wait_us", 0) for t in threads], marker="o", label=impl
        )
    top.set_ylabel("checkouts+returns / s (median)")
    bottom.set_ylabel("p99 checkout wait (µs, median)")
    bottom.set_xlabel("threads (pool of 4)")
    for axis in (top, bottom):
        axis.set_xscale("log", base=2)
        axis.grid(True, alpha=0.3)
        axis.legend()
    bottom.set_yscale("log")
    top.set_title("Bare pool under contention")
    fig.tight_layout()
    path = out / "scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def memory(samples: list[list[float]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 3.5))
    done = [s[0] for s in samples]
    axis.plot(done, [s[1] for s in samples], marker="o", label="RSS growth (KiB)")
    axis.plot(done, [s[2] / 1024 for s in samples], marker="o", label="tracemalloc growth (KiB)")
    axis.set_xlabel("checkouts")
    axis.set_title("Memory over checkouts of the bare pool (django_poolbackend)")
    axis.grid(True, alpha=0.3)
    axis.legend()
    fig.tight_layout()
    path = out / "memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
