"""Restoring into a directory: workers write chunks themselves, and what landed is checked before the rename."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.assemble import chunk_buffer
from catalog.chunker import file_digest_of
from catalog.repo import Repository
from tests.conftest import Toolkit
from toolkit.ops.restore import SPOT_CHECK_BLOCKS, restore
from toolkit.ops.snapshot import Source, snapshot
from toolkit.transports.local import PARTIAL_SUFFIX, BlockFile, LocalTransport

CHUNK = 64 << 10
APPS = "cloudvolumes/apps"


def _volume(ds: Path, name: str, blocks: list[str], tail: int = 0) -> bytes:
    """A descriptor and a flat file of CHUNK-sized blocks: z(ero), t(ext), r(andom); then ``tail`` random bytes."""
    folder = ds / APPS
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {
        "z": lambda: bytes(CHUNK),
        "t": lambda: (b"AppStack text " * CHUNK)[:CHUNK],
        "r": lambda: os.urandom(CHUNK),
    }
    data = b"".join(kinds[b]() for b in blocks) + os.urandom(tail)
    (folder / f"{name}-flat.vmdk").write_bytes(data)
    (folder / f"{name}.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="vmfs"\n'
        f'RW {len(data) // 512} VMFS "{name}-flat.vmdk"\n'
    )
    return data


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[Repository, Path]]:
    ds = tmp_path / "ds"
    _volume(ds, "Office", ["t", "r", "z", "z", "t", "r", "z", "t", "r", "r", "t", "z"], tail=5000)
    _volume(ds, "Small", ["r", "z", "t"])
    _volume(ds, "Big", [("r", "t", "z")[i % 3] for i in range(60)])
    repo = Repository.init(tmp_path / "repo", chunk_size=CHUNK, pack_target_bytes=300_000)
    with repo.writing("snapshot"):
        report = snapshot(repo, [Source("ds", LocalTransport(ds))])
    assert report.ok
    yield repo, ds
    repo.close()


def _flats(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / APPS).glob("*.vmdk"))}


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if PARTIAL_SUFFIX in p.name)


# --- BlockFile ---------------------------------------------------------------------------------


def test_block_file_takes_aligned_and_unaligned_writes_from_threads(tmp_path: Path) -> None:
    t = LocalTransport(tmp_path / "ds")
    size = 40 * CHUNK + 777
    expected = bytearray(size)
    with t.open_blocks("a/f-flat.vmdk", size, 1_700_000_000_000_000_000) as blocks:

        def write(i: int) -> None:
            buf = chunk_buffer(CHUNK)  # page-aligned: direct I/O where the file system takes it
            block = os.urandom(CHUNK)
            buf[:CHUNK] = block
            expected[i * CHUNK : (i + 1) * CHUNK] = block
            blocks.write_block(i * CHUNK, buf[:CHUNK])

        workers = [threading.Thread(target=write, args=(i,)) for i in range(0, 40, 3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        tail = os.urandom(777)
        expected[40 * CHUNK :] = tail
        blocks.write_block(40 * CHUNK, tail)  # short and unaligned: through the page cache
        odd = memoryview(bytearray(b"x" + os.urandom(CHUNK)))[1:]  # unaligned memory, aligned offset
        expected[CHUNK : 2 * CHUNK] = odd
        blocks.write_block(CHUNK, odd)
        assert blocks.bytes_accepted == 15 * CHUNK + 777
        blocks.sync()
        assert blocks.read_digest(CHUNK) == file_digest_of(io.BytesIO(bytes(expected)), CHUNK)
    final = tmp_path / "ds/a/f-flat.vmdk"
    assert final.read_bytes() == bytes(expected)
    assert final.stat().st_mtime_ns == 1_700_000_000_000_000_000
    assert final.stat().st_blocks * 512 < size  # the unwritten blocks stayed holes
    assert _leftovers(tmp_path / "ds") == []


def test_block_file_that_fails_leaves_nothing(tmp_path: Path) -> None:
    t = LocalTransport(tmp_path / "ds")

    def fail() -> None:
        with t.open_blocks("f-flat.vmdk", 4 * CHUNK, 0) as blocks:
            blocks.write_block(0, os.urandom(CHUNK))
            raise RuntimeError("the chunk after it was damaged")

    with pytest.raises(RuntimeError):
        fail()
    assert list((tmp_path / "ds").iterdir()) == []


def test_read_digest_reads_what_the_file_holds_not_what_was_written(tmp_path: Path) -> None:
    t = LocalTransport(tmp_path / "ds")
    data = os.urandom(4 * CHUNK)

    def check_then_drop() -> None:
        with t.open_blocks("f-flat.vmdk", len(data), 0) as blocks:
            for off in range(0, len(data), CHUNK):
                buf = chunk_buffer(CHUNK)
                buf[:CHUNK] = data[off : off + CHUNK]
                blocks.write_block(off, buf[:CHUNK])
            blocks.sync()
            assert blocks.read_digest(CHUNK) == file_digest_of(io.BytesIO(data), CHUNK)
            (partial,) = (tmp_path / "ds").glob(f"*{PARTIAL_SUFFIX}")
            with partial.open("r+b") as f:  # another writer, or the storage, changes a byte
                f.seek(CHUNK + 5)
                f.write(bytes([data[CHUNK + 5] ^ 0xFF]))
                f.flush()
                os.fsync(f.fileno())
            assert blocks.read_digest(CHUNK) != file_digest_of(io.BytesIO(data), CHUNK)
            assert blocks.block_sha256(CHUNK, CHUNK, CHUNK) != hashlib.sha256(data[CHUNK : 2 * CHUNK]).digest()
            assert blocks.block_sha256(0, CHUNK, CHUNK) == hashlib.sha256(data[:CHUNK]).digest()
            raise RuntimeError("not published")

    with pytest.raises(RuntimeError):
        check_then_drop()
    assert list((tmp_path / "ds").iterdir()) == []


# --- restore -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["written", "readback"])
def test_restore_into_a_directory_is_bit_for_bit_and_sparse(
    stored: tuple[Repository, Path], tmp_path: Path, mode: str
) -> None:
    repo, ds = stored
    out = tmp_path / "out"
    report = restore(repo, "2100-01-01", LocalTransport(out), verify_landed=mode)
    assert report.ok, report.volumes
    assert {v["status"] for v in report.volumes} == {"restored"}
    assert _flats(out) == _flats(ds)
    big = out / APPS / "Big-flat.vmdk"
    assert big.stat().st_blocks * 512 <= 41 * CHUNK  # 20 of 60 blocks are zero: holes
    assert _leftovers(out) == []
    again = restore(repo, "2100-01-01", LocalTransport(out), verify_landed=mode)
    assert {v["status"] for v in again.volumes} == {"in place"}


class LyingDisk(LocalTransport):
    """Takes every write of the block at ``bad_offset`` of ``name``, but then holds it with one byte changed.

    What a failing disk, controller or network file system that acknowledges writes does.
    """

    def __init__(self, root: Path, name: str, bad_offset: int) -> None:
        super().__init__(root)
        self.name, self.bad_offset = name, bad_offset
        self.changed = 0

    @contextlib.contextmanager
    def open_blocks(self, path: str, size: int, mtime_ns: int) -> Iterator[BlockFile]:
        with super().open_blocks(path, size, mtime_ns) as blocks:
            if path.endswith(self.name):
                honest = blocks.write_block

                def write_block(offset: int, data: bytes | memoryview) -> None:
                    honest(offset, data)
                    if offset == self.bad_offset:
                        (partial,) = (self.root / APPS).glob(f".{self.name}.*{PARTIAL_SUFFIX}")
                        with partial.open("r+b") as f:
                            f.seek(offset + 100)
                            f.write(bytes([data[100] ^ 0x01]))
                        self.changed += 1

                blocks.write_block = write_block  # type: ignore[method-assign]
            yield blocks


@pytest.mark.parametrize(
    ("mode", "name", "block"),
    [
        ("readback", "Big-flat.vmdk", 31),  # anywhere: the whole file is read back
        ("written", "Big-flat.vmdk", 0),  # the first data block is always read back
        ("written", "Big-flat.vmdk", 58),  # and the last one (block 59 is a hole)
        ("written", "Small-flat.vmdk", 2),  # a file of few blocks is read back whole
    ],
)
def test_a_block_the_storage_changed_is_never_put_in_place(
    stored: tuple[Repository, Path], tmp_path: Path, mode: str, name: str, block: int
) -> None:
    repo, ds = stored
    out = tmp_path / "out"
    disk = LyingDisk(out, name, block * CHUNK)
    report = restore(repo, "2100-01-01", disk, verify_landed=mode)
    assert disk.changed == 1
    assert not report.ok
    failed = [v for v in report.volumes if v["status"] == "failed"]
    assert len(failed) == 1 and "what landed has digest" in failed[0]["error"], report.volumes
    assert not (out / APPS / name).exists()
    assert _leftovers(out) == []
    assert {n: d for n, d in _flats(out).items()} == {n: d for n, d in _flats(ds).items() if n in _flats(out)}


def test_a_damaged_chunk_fails_its_volume_and_leaves_no_partial(
    stored: tuple[Repository, Path], tmp_path: Path
) -> None:
    repo, ds = stored
    manifest_ids = [
        f.manifest_id for v in repo.index.versions_as_of("2100-01-01") for f in repo.index.files(v.version_id)
    ]
    from catalog.assemble import load_manifest

    big = next(
        m for m in (load_manifest(repo.index, repo.reader, mid) for mid in manifest_ids) if m.file_size == 60 * CHUNK
    )
    loc = repo.index.locate(big.chunk_ids[30])
    assert loc is not None
    path = repo.pack_file(loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + 3] ^= 0x10
    path.chmod(0o600)
    path.write_bytes(bytes(raw))
    repo.reader.close()
    out = tmp_path / "out"
    report = restore(repo, "2100-01-01", LocalTransport(out))
    statuses = {v["path"]: v["status"] for v in report.volumes}
    assert statuses[f"{APPS}/Big.vmdk"] == "failed"
    assert not (out / APPS / "Big-flat.vmdk").exists()
    assert _leftovers(out) == []
    assert _flats(out)["Office-flat.vmdk"] == _flats(ds)["Office-flat.vmdk"]


def test_an_unknown_check_is_refused(stored: tuple[Repository, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="verify_landed"):
        restore(stored[0], "2100-01-01", LocalTransport(tmp_path / "out"), verify_landed="none")


def test_spot_check_takes_first_last_and_random_data_chunks_and_data_ranges_skip_holes() -> None:
    from catalog.manifest import Manifest
    from catalog.types import HOLE_ID, ChunkId
    from toolkit.ops.restore import data_ranges, spot_check_blocks

    ids = [HOLE_ID if i % 10 in (0, 1, 8) else ChunkId(i.to_bytes(16, "big")) for i in range(100)]
    m = Manifest(CHUNK, 100 * CHUNK - 10, tuple(ids))
    data = [i * CHUNK for i in range(100) if ids[i] != HOLE_ID]
    total, spots = spot_check_blocks(m, SPOT_CHECK_BLOCKS)
    assert total == len(data) * CHUNK - 10  # the last chunk is short
    assert len(spots) == SPOT_CHECK_BLOCKS
    assert {data[0], data[-1]} <= set(spots) <= set(data)
    assert spots[data[-1]] == CHUNK - 10
    assert len({frozenset(spot_check_blocks(m, SPOT_CHECK_BLOCKS)[1]) for _ in range(20)}) > 1  # random
    few = Manifest(CHUNK, 5 * CHUNK, tuple(ids[:5]))
    assert spot_check_blocks(few, SPOT_CHECK_BLOCKS) == (
        3 * CHUNK,
        {2 * CHUNK: CHUNK, 3 * CHUNK: CHUNK, 4 * CHUNK: CHUNK},
    )
    assert spot_check_blocks(m, 0) == (total, {})
    assert list(data_ranges(m))[:3] == [(2 * CHUNK, 6 * CHUNK), (9 * CHUNK, CHUNK), (12 * CHUNK, 6 * CHUNK)]
    assert sum(n for _, n in data_ranges(m)) == total


def test_cli_restore_reads_back_on_request(tmp_path: Path, toolkit: Toolkit) -> None:
    ds = tmp_path / "ds"
    _volume(ds, "Cli", ["r", "z", "t", "r"], tail=100)
    assert toolkit("init", "--chunk-size", "64K").exit_code == 0
    assert toolkit("snapshot", str(ds)).exit_code == 0
    for mode in ("readback", "written"):
        out = tmp_path / f"out-{mode}"
        r = toolkit("--json", "restore", "--as-of", "2100-01-01", "--to", str(out), "--verify-landed", mode)
        assert r.exit_code == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["landed_check"] == mode
        assert _flats(out) == _flats(ds)
    default = toolkit.json("restore", "--as-of", "2100-01-01", "--to", str(tmp_path / "out-default"))
    assert default["landed_check"] == "written"  # without --register
    r = toolkit("restore", "--as-of", "2100-01-01", "--to", str(tmp_path / "x"), "--verify-landed", "none")
    assert r.exit_code == 2
