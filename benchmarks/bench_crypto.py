"""Encryption benchmarks (pytest-benchmark): the two AEADs per record, and snapshot, restore and verify
encrypted against unencrypted on the same data.

Run with ``pytest benchmarks/bench_crypto.py --benchmark-only -p no:cacheprovider``. The data set is
the pipeline benchmarks' (gen_appstacks.py, 4 x 128 MiB unless ``TOOLKIT_BENCH_VOLUMES`` /
``TOOLKIT_BENCH_SIZE_MIB`` say otherwise). Every benchmark records MiB/s in ``extra_info``; the ratio
encrypted / unencrypted is read from the table (same invocation, same data). Nothing asserts on time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from benchlib import GeneratorMissing, MiB, find_generator, generate_a, logical_bytes, rmtree
from benchrepo import record_throughput, snapshot_dir

from catalog.check import verify
from catalog.chunker import DEFAULT_CHUNK_SIZE, iter_offsets
from catalog.crypto import CIPHERS, RepoKeys, new_master_key
from catalog.keys import TEST_KDF
from catalog.repo import Repository
from catalog.types import CODEC_ZSTD, TYPE_DATA
from toolkit.ops.restore import restore
from toolkit.transports.local import LocalTransport

VOLUMES = int(os.environ.get("TOOLKIT_BENCH_VOLUMES", "4"))
SIZE_MIB = int(os.environ.get("TOOLKIT_BENCH_SIZE_MIB", "128"))
RECORDS = 64  # 1 MiB records per AEAD round
MODES = ("none", *CIPHERS)


@dataclass(frozen=True)
class Data:
    a: Path
    size: int


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    try:
        find_generator()
    except GeneratorMissing as exc:
        pytest.fail(str(exc.code), pytrace=False)
    a = generate_a(tmp_path_factory.mktemp("appstacks") / "A", VOLUMES, SIZE_MIB)
    return Data(a, logical_bytes(a))


def _init(root: Path, mode: str) -> Repository:
    # The key derivation runs once, untimed; the cheapest scrypt cost keeps the setup short.
    cipher = None if mode == "none" else mode
    return Repository.init(root, encryption=cipher, passphrase="bench" if cipher else None, kdf=TEST_KDF)


# -- the AEADs on their own ---------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("threads", [1, 2])
def test_encrypt_1mib_records(benchmark: Any, cipher: str, threads: int) -> None:
    """Encrypt 64 records of 1 MiB (random nonce, associated data as in a pack), on 1 or 2 threads."""
    keys = RepoKeys("00" * 16, cipher, new_master_key())
    block = os.urandom(DEFAULT_CHUNK_SIZE)
    cid = keys.chunk_id(b"\0" * 32)
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def run() -> int:
            return sum(
                pool.map(
                    lambda _i: len(keys.encrypt_record(cid, TYPE_DATA, CODEC_ZSTD, len(block), block)), range(RECORDS)
                )
            )

        benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    record_throughput(benchmark, RECORDS * len(block), threads=threads)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_decrypt_1mib_records(benchmark: Any, cipher: str) -> None:
    keys = RepoKeys("00" * 16, cipher, new_master_key())
    block = os.urandom(DEFAULT_CHUNK_SIZE)
    cid = keys.chunk_id(b"\0" * 32)
    sealed = keys.encrypt_record(cid, TYPE_DATA, CODEC_ZSTD, len(block), block)

    def run() -> int:
        return sum(len(keys.decrypt_record(cid, TYPE_DATA, CODEC_ZSTD, len(block), sealed)) for _ in range(RECORDS))

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    record_throughput(benchmark, RECORDS * len(block))


def test_keyed_ids_of_1mib_chunks(benchmark: Any) -> None:
    """The encrypted repository's chunk id (SHA-256, then keyed BLAKE2b-128) against xxh3-128's cost."""
    keys = RepoKeys("00" * 16, CIPHERS[0], new_master_key())
    buf = os.urandom(RECORDS * DEFAULT_CHUNK_SIZE)
    chunks = [buf[o : o + n] for o, n in iter_offsets(len(buf), DEFAULT_CHUNK_SIZE)]
    benchmark.pedantic(lambda: [keys.identify(c) for c in chunks], rounds=5, warmup_rounds=1)
    record_throughput(benchmark, len(buf))


# -- the pipeline, encrypted and not --------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    rmtree(tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_first_snapshot(benchmark: Any, data: Data, workdir: Path, mode: str) -> None:
    """Snapshot of A into an empty repository (every chunk new: hashed, compressed, encrypted)."""
    made: list[Repository] = []

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        repo = _init(workdir / f"repo-{len(made)}", mode)
        made.append(repo)
        os.sync()
        return (repo,), {}

    def teardown(repo: Repository) -> None:
        repo.close()
        rmtree(repo.root)

    rep = benchmark.pedantic(lambda repo: snapshot_dir(repo, data.a), setup=setup, teardown=teardown, rounds=3)
    record_throughput(benchmark, data.size, mode=mode, new_chunks=rep["stats"]["new_chunks"])


@pytest.fixture(scope="module")
def filled(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Repository]]:
    """One repository per mode, each holding a snapshot of A."""
    root = tmp_path_factory.mktemp("filled")
    repos = {mode: _init(root / mode, mode) for mode in MODES}
    for repo in repos.values():
        snapshot_dir(repo, data.a)
    yield repos
    for repo in repos.values():
        repo.close()
    rmtree(root)


@pytest.mark.parametrize("mode", MODES)
def test_restore(benchmark: Any, filled: dict[str, Repository], workdir: Path, mode: str) -> None:
    """Full restore of A (decrypted, decompressed, id-checked, sparse, digest-checked, fsynced per file)."""
    repo = filled[mode]
    when = repo.index.snapshots()[0].created_at
    targets: list[Path] = []

    def setup() -> tuple[tuple[Path], dict[str, Any]]:
        target = workdir / f"restore-{len(targets)}"
        targets.append(target)
        os.sync()
        return (target,), {}

    def run(target: Path) -> int:
        rep = restore(repo, when, LocalTransport(target))
        assert rep.ok, rep.to_json()
        return rep.bytes_written

    written = benchmark.pedantic(run, setup=setup, teardown=rmtree, rounds=3)
    record_throughput(benchmark, written, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_verify_read_data(benchmark: Any, filled: dict[str, Repository], data: Data, mode: str) -> None:
    """verify --read-data: every pack read, every record authenticated (when encrypted), decoded, re-hashed."""
    repo = filled[mode]
    rep = benchmark.pedantic(lambda: verify(repo, read_data=True), setup=os.sync, rounds=3)
    assert rep.ok, rep.to_json()
    record_throughput(benchmark, data.size, mode=mode, pack_MiB_read=round(rep.bytes_read / MiB, 1))
