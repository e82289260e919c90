"""Pipeline benchmarks (pytest-benchmark): chunk+hash+compress, snapshots, restore, verify.

Run with ``pytest benchmarks --benchmark-only -p no:cacheprovider``. The data
set is generated once per pytest run with gen_appstacks.py (4 x 128 MiB unless
``TOOLKIT_BENCH_VOLUMES`` / ``TOOLKIT_BENCH_SIZE_MIB`` say otherwise). Each
benchmark records MiB/s in ``extra_info``; nothing here asserts on time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from benchlib import GeneratorMissing, MiB, find_generator, generate_a, generate_b, logical_bytes, rmtree
from benchrepo import record_throughput, snapshot_dir

from catalog.check import verify
from catalog.chunker import DEFAULT_CHUNK_SIZE, chunk_id_of, is_zero, iter_offsets
from catalog.repo import Repository
from catalog.store import DEFAULT_ZSTD_LEVEL, Compressor
from toolkit.ops.restore import restore
from toolkit.transports.local import LocalTransport

VOLUMES = int(os.environ.get("TOOLKIT_BENCH_VOLUMES", "4"))
SIZE_MIB = int(os.environ.get("TOOLKIT_BENCH_SIZE_MIB", "128"))
BUFFER_BYTES = 64 * MiB


@dataclass(frozen=True)
class Data:
    a: Path
    b: Path
    size: int  # logical bytes of A's volume files (B has the same)


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    try:
        find_generator()
    except GeneratorMissing as exc:
        pytest.fail(str(exc.code), pytrace=False)
    root = tmp_path_factory.mktemp("appstacks")
    a = generate_a(root / "A", VOLUMES, SIZE_MIB)
    b = generate_b(a, root / "B")
    return Data(a, b, logical_bytes(a))


class Repos:
    """Fresh repositories under one directory, closed and removed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0
        self.open: list[Repository] = []

    def new(self, *, with_a: Path | None = None) -> Repository:
        self.n += 1
        repo = Repository.init(self.root / f"repo-{self.n}")
        self.open.append(repo)
        if with_a is not None:
            snapshot_dir(repo, with_a)
        return repo

    def drop(self, repo: Repository) -> None:
        repo.close()
        self.open.remove(repo)
        rmtree(repo.root)

    def close(self) -> None:
        for repo in list(self.open):
            self.drop(repo)


@pytest.fixture
def repos(tmp_path: Path) -> Iterator[Repos]:
    r = Repos(tmp_path)
    yield r
    r.close()


@pytest.fixture(scope="module")
def repo_a(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    """One repository holding a snapshot of A (read-only benchmarks share it)."""
    r = Repos(tmp_path_factory.mktemp("repo-a"))
    repo = r.new(with_a=data.a)
    yield repo
    r.close()


# -- the per-chunk kernel -------------------------------------------------------


def _buffer(data: Data) -> bytes:
    """64 MiB taken in equal slices from the middle of every volume of A (real mix of zero/text/random)."""
    flats = sorted(data.a.glob("*-flat.vmdk"))
    part = BUFFER_BYTES // len(flats)
    out = bytearray()
    for f in flats:
        with f.open("rb") as fh:
            fh.seek(max(0, f.stat().st_size // 2 - part // 2))
            out += fh.read(part)
    return bytes(out)


def _one_chunk(comp: Compressor, raw: bytes) -> int:
    if is_zero(raw):
        return 0
    chunk_id_of(raw)
    hashlib.sha256(raw).digest()
    return len(comp.compress(raw)[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_chunk_hash_compress_64mib(benchmark: Any, data: Data, threads: int) -> None:
    """Zero test, xxh3-128 id, SHA-256 and zstd (default level) over 1 MiB chunks of a 64 MiB buffer."""
    buf = _buffer(data)
    chunks = [buf[o : o + n] for o, n in iter_offsets(len(buf), DEFAULT_CHUNK_SIZE)]
    comp = Compressor(DEFAULT_ZSTD_LEVEL)
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def run() -> int:
            return sum(pool.map(lambda c: _one_chunk(comp, c), chunks))

        stored = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    record_throughput(benchmark, len(buf), threads=threads, stored_MiB=round(stored / MiB, 1))


# -- snapshots ---------------------------------------------------------------


def test_first_snapshot(benchmark: Any, data: Data, repos: Repos) -> None:
    """Snapshot of A into an empty repository (every chunk new)."""

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        repo = repos.new()
        os.sync()
        return (repo,), {}

    def teardown(repo: Repository) -> None:
        repos.drop(repo)

    rep = benchmark.pedantic(lambda repo: snapshot_dir(repo, data.a), setup=setup, teardown=teardown, rounds=3)
    record_throughput(benchmark, data.size, new_chunks=rep["stats"]["new_chunks"])


def test_unchanged_snapshot(benchmark: Any, data: Data, repos: Repos) -> None:
    """Snapshot of A again: every file skipped on size and mtime."""
    repo = repos.new(with_a=data.a)
    rep = benchmark.pedantic(lambda: snapshot_dir(repo, data.a), setup=os.sync, rounds=5)
    assert rep["stats"]["bytes_read"] == 0
    record_throughput(benchmark, data.size, volumes=VOLUMES)


def test_changed_snapshot(benchmark: Any, data: Data, repos: Repos) -> None:
    """Snapshot of B after A: every file re-read, 3 % of the blocks new."""

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        repo = repos.new(with_a=data.a)
        os.sync()
        return (repo,), {}

    def teardown(repo: Repository) -> None:
        repos.drop(repo)

    rep = benchmark.pedantic(lambda repo: snapshot_dir(repo, data.b), setup=setup, teardown=teardown, rounds=3)
    record_throughput(
        benchmark, data.size, new_chunks=rep["stats"]["new_chunks"], pack_bytes_added=rep["stats"]["pack_bytes_added"]
    )


# -- restore and verify ----------------------------------------------------------


@pytest.mark.parametrize("verify_landed", ["written", "readback"])
def test_restore(benchmark: Any, data: Data, repo_a: Repository, tmp_path: Path, verify_landed: str) -> None:
    """Full restore of A's snapshot (sparse, digest-checked, fsynced per file), each landed-data check."""
    when = repo_a.index.snapshots()[0].created_at
    targets: list[Path] = []

    def setup() -> tuple[tuple[Path], dict[str, Any]]:
        target = tmp_path / f"restore-{len(targets)}"
        targets.append(target)
        os.sync()
        return (target,), {}

    def run(target: Path) -> int:
        rep = restore(repo_a, when, LocalTransport(target), verify_landed=verify_landed)
        assert rep.ok, rep.to_json()
        return rep.bytes_written

    written = benchmark.pedantic(run, setup=setup, teardown=rmtree, rounds=3)
    record_throughput(benchmark, written, verify_landed=verify_landed)


def test_verify_read_data(benchmark: Any, repo_a: Repository, data: Data) -> None:
    """verify --read-data: every pack read, every chunk decoded and re-hashed."""
    rep = benchmark.pedantic(lambda: verify(repo_a, read_data=True), setup=os.sync, rounds=3)
    assert rep.ok, rep.to_json()
    record_throughput(benchmark, data.size, pack_MiB_read=round(rep.bytes_read / MiB, 1))
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > 0:
        benchmark.extra_info["pack MiB/s"] = round(rep.bytes_read / MiB / stats.stats.median, 1)
