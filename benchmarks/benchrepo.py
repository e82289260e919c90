"""What the in-process benchmarks (bench_*.py) share: a snapshot of a directory, and throughput in extra_info."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import MiB

from catalog.repo import Repository
from toolkit.ops.snapshot import Source, snapshot
from toolkit.transports.local import LocalTransport


def snapshot_dir(repo: Repository, src: Path) -> dict[str, Any]:
    """One snapshot of ``src`` (as source "cur") under the writer lock; its JSON report."""
    with repo.writing("snapshot"):
        rep = snapshot(repo, [Source("cur", LocalTransport(src))])
    assert rep.ok, rep.to_json()
    return rep.to_json()


def record_throughput(benchmark: Any, nbytes: int, **extra: Any) -> None:
    """MiB handled and MiB/s at the median time, with ``extra``, in the benchmark's extra_info."""
    benchmark.extra_info.update(extra)
    benchmark.extra_info["MiB"] = round(nbytes / MiB, 1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > 0:
        benchmark.extra_info["MiB/s"] = round(nbytes / MiB / stats.stats.median, 1)
