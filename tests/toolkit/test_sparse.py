"""Holes are neither read on snapshot nor read back on restore."""

from __future__ import annotations

import os
from pathlib import Path

from catalog.repo import Repository
from toolkit.ops.restore import restore
from toolkit.ops.snapshot import Source, snapshot
from toolkit.transports.local import LocalTransport, file_data_ranges, in_hole

MIB = 1 << 20


def test_data_ranges_and_in_hole(tmp_path: Path) -> None:
    f = tmp_path / "sparse"
    with f.open("wb") as fh:
        fh.truncate(64 * MIB)
        fh.seek(10 * MIB)
        fh.write(b"x" * MIB)
    ranges = file_data_ranges(f)
    assert ranges and all(s <= 10 * MIB < e or s < 11 * MIB for s, e in ranges)
    assert in_hole(ranges, 0, MIB)
    assert not in_hole(ranges, 10 * MIB, MIB)
    assert in_hole(ranges, 40 * MIB, MIB)
    assert not in_hole([(0, 100)], 50, 10)
    assert in_hole([], 0, 10)


class CountingTransport(LocalTransport):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bytes_read = 0

    def open_read(self, path: str):  # type: ignore[override]
        inner = super().open_read(path)
        outer = self

        class Wrap:
            def __enter__(self):  # type: ignore[no-untyped-def]
                read_at = inner.__enter__()

                def counted(offset: int, size: int) -> bytes:
                    data = read_at(offset, size)
                    outer.bytes_read += len(data)
                    return data

                return counted

            def __exit__(self, *exc: object) -> None:
                inner.__exit__(*exc)  # type: ignore[arg-type]

        return Wrap()


def test_a_big_sparse_volume_is_captured_and_restored_without_reading_its_holes(tmp_path: Path) -> None:
    ds = tmp_path / "ds" / "cloudvolumes" / "apps"
    ds.mkdir(parents=True)
    size = 2048 * MIB
    (ds / "Big.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="vmfs"\n'
        f'RW {size // 512} VMFS "Big-flat.vmdk"\n'
    )
    with (ds / "Big-flat.vmdk").open("wb") as f:
        f.truncate(size)
        for i in range(0, 2048, 256):
            f.seek(i * MIB)
            f.write(os.urandom(MIB))
    repo = Repository.init(tmp_path / "repo")
    source = CountingTransport(tmp_path / "ds")
    with repo.writing("snapshot"):
        report = snapshot(repo, [Source("ds", source)])
    assert {v["state"] for v in report.volumes} == {"new"}
    assert source.bytes_read < 20 * MIB  # 8 MiB of data and the descriptor; 2 GiB of holes never read
    out = CountingTransport(tmp_path / "out")
    result = restore(repo, "2100-01-01", out)
    assert result.ok, result.volumes
    assert out.bytes_read < 20 * MIB  # the landed check skipped the holes too
    restored = tmp_path / "out" / "cloudvolumes" / "apps" / "Big-flat.vmdk"
    assert restored.stat().st_size == size
    assert restored.stat().st_blocks * 512 < 64 * MIB
    repo.close()
