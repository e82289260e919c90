"""Object storage benchmarks (pytest-benchmark): snapshot, restore and verify against moto's S3 server.

Run with ``pytest benchmarks/bench_s3.py --benchmark-only -p no:cacheprovider``. The same
data set as bench_pipeline.py (4 x 128 MiB from gen_appstacks.py unless
``TOOLKIT_BENCH_VOLUMES`` / ``TOOLKIT_BENCH_SIZE_MIB`` say otherwise) goes into a
directory repository and into an ``s3://`` repository on moto's standalone server on
loopback (toolkit/lab/s3.py), default settings otherwise. moto keeps objects in its own
Python process and answers one request per connection: the figures compare the toolkit's
two backends on one machine, they do not predict a real object store's throughput.
Each benchmark records MiB/s of the volumes' logical bytes in ``extra_info``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from benchlib import GeneratorMissing, MiB, find_generator, generate_a, logical_bytes, rmtree
from benchrepo import record_throughput, snapshot_dir

from catalog.check import verify
from catalog.repo import Repository
from toolkit.lab.s3 import MotoS3Server
from toolkit.objstore import ObjectStore, make_client
from toolkit.ops.restore import restore
from toolkit.s3repo import S3Access, S3Remote, init_repository, open_repository
from toolkit.transports.local import LocalTransport

VOLUMES = int(os.environ.get("TOOLKIT_BENCH_VOLUMES", "4"))
SIZE_MIB = int(os.environ.get("TOOLKIT_BENCH_SIZE_MIB", "128"))
BACKENDS = ["dir", "s3"]
AWS_HIDDEN = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REQUEST_CHECKSUM_CALCULATION")


@dataclass(frozen=True)
class Data:
    a: Path
    size: int  # logical bytes of the volume files


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    try:
        find_generator()
    except GeneratorMissing as exc:
        pytest.fail(str(exc.code), pytrace=False)
    a = generate_a(tmp_path_factory.mktemp("appstacks") / "A", VOLUMES, SIZE_MIB)
    return Data(a, logical_bytes(a))


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3Server]:
    """moto's S3 server, with this process's AWS environment pointed at it (and at nothing else)."""
    work = tmp_path_factory.mktemp("moto")
    with MotoS3Server(work) as server, pytest.MonkeyPatch.context() as mp:
        for name in AWS_HIDDEN:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(work / "absent"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(work / "absent"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name, value in server.env().items():
            mp.setenv(name, value)
        yield server


class Repos:
    """Fresh repositories of either kind under one directory, closed and removed at the end."""

    def __init__(self, root: Path, moto: MotoS3Server) -> None:
        self.root = root
        self.moto = moto
        self.n = 0
        self.open: list[Repository] = []
        self.access: dict[int, S3Access] = {}

    def new(self, backend: str, *, with_a: Path | None = None) -> Repository:
        self.n += 1
        if backend == "dir":
            repo = Repository.init(self.root / f"repo-{self.n}")
        else:
            bucket = self.moto.create_bucket(f"bench-{self.n}-{uuid.uuid4().hex[:12]}")
            _config, access = init_repository(f"s3://{bucket}/repo", self.root / f"cache-{self.n}", chunk_size=1 << 20)
            repo = open_repository(access)
            self.access[id(repo)] = access
        self.open.append(repo)
        if with_a is not None:
            snapshot_dir(repo, with_a)
        return repo

    def reopen_cold(self, repo: Repository) -> Repository:
        """The same s3:// repository with its pack cache emptied (the catalog stays)."""
        access = self.access.pop(id(repo))
        repo.close()
        self.open.remove(repo)
        shutil.rmtree(access.root / "packs")
        (access.root / "packs").mkdir()
        fresh = open_repository(access)
        self.access[id(fresh)] = access
        self.open.append(fresh)
        return fresh

    def drop(self, repo: Repository) -> None:
        repo.close()
        self.open.remove(repo)
        rmtree(repo.root)
        if isinstance(repo.remote, S3Remote):
            self.access.pop(id(repo), None)
            store = ObjectStore(make_client(), repo.remote.store.bucket, "")
            for info in list(store.list("")):
                store.delete(info.key)
            self.moto.client().delete_bucket(Bucket=repo.remote.store.bucket)

    def close(self) -> None:
        for repo in list(self.open):
            self.drop(repo)


@pytest.fixture
def repos(tmp_path: Path, moto: MotoS3Server) -> Iterator[Repos]:
    r = Repos(tmp_path, moto)
    yield r
    r.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_snapshot(benchmark: Any, data: Data, repos: Repos, backend: str) -> None:
    """Snapshot of A into an empty repository: every chunk new, every pack uploaded (s3)."""
    uploaded: list[int] = []

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        repo = repos.new(backend)
        os.sync()
        return (repo,), {}

    def run(repo: Repository) -> dict[str, Any]:
        rep = snapshot_dir(repo, data.a)
        if isinstance(repo.remote, S3Remote):
            uploaded.append(repo.remote.uploads.bytes)
        repos.drop(repo)
        return rep

    rep = benchmark.pedantic(run, setup=setup, rounds=3)
    extra = {"pack_MiB": round(rep["stats"]["pack_bytes_added"] / MiB, 1)}
    if uploaded:
        extra["uploaded_MiB"] = round(uploaded[-1] / MiB, 1)
    record_throughput(benchmark, data.size, backend=backend, **extra)


@pytest.mark.parametrize("backend", ["dir", "s3-cold", "s3-warm"])
def test_restore(benchmark: Any, data: Data, repos: Repos, tmp_path: Path, backend: str) -> None:
    """Full restore of A: from a directory, from s3 with an empty pack cache (every pack fetched), and
    from s3 with every pack cached (the catalog and cache at work, no download). One untimed restore first."""
    holder = [repos.new("dir" if backend == "dir" else "s3", with_a=data.a)]
    when = holder[0].index.snapshots()[0].created_at
    targets: list[Path] = []

    def setup() -> tuple[tuple[Path], dict[str, Any]]:
        if backend == "s3-cold":
            holder[0] = repos.reopen_cold(holder[0])
        target = tmp_path / f"restore-{len(targets)}"
        targets.append(target)
        os.sync()
        return (target,), {}

    def run(target: Path) -> int:
        rep = restore(holder[0], when, LocalTransport(target))
        assert rep.ok, rep.to_json()
        return rep.bytes_written

    run(tmp_path / "warm-up")  # every backend alike: page cache warm; s3-warm: every pack in the pack cache
    rmtree(tmp_path / "warm-up")
    written = benchmark.pedantic(run, setup=setup, teardown=rmtree, rounds=3)
    fetched = holder[0].cache.bytes_fetched if holder[0].cache is not None else 0
    record_throughput(benchmark, written, backend=backend, fetched_MiB_last_round=round(fetched / MiB, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_read_data(benchmark: Any, data: Data, repos: Repos, backend: str) -> None:
    """verify --read-data: every pack read (s3: downloaded anew) and every chunk re-checked."""
    repo = repos.new(backend, with_a=data.a)
    rep = benchmark.pedantic(lambda: verify(repo, read_data=True, open_pack=repo.pack_opener()), rounds=3)
    assert rep.ok, rep.to_json()
    record_throughput(benchmark, data.size, backend=backend, pack_MiB_read=round(rep.bytes_read / MiB, 1))
