"""The AppStack generator: real NTFS-in-VMDK volumes checked with qemu-img and ntfs-3g, and the fallback."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from toolkit.lab import corpus
from toolkit.lab.corpus import MIB, VolumeFiles

REQUIRED_TOOLS = ("qemu-img", "mkntfs", "ntfscp", "ntfsls", "ntfscat", "ntfstruncate")


def _tool(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(f"{name} is missing: install qemu-utils and ntfs-3g (apt-get install qemu-utils ntfs-3g)")


def _qemu_check(vol: VolumeFiles) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("qemu-img"), "check", str(vol.descriptor)], capture_output=True, text=True, check=False
    )


def _ntfs_names(vol: VolumeFiles) -> dict[str, int]:
    result = subprocess.run([_tool("ntfsls"), "-f", "-l", str(vol.flat)], capture_output=True, text=True, check=True)
    names = {}
    for line in result.stdout.splitlines():
        fields = line.split(None, 5)  # size, month, day, time, year, name
        names[fields[5]] = int(fields[0])
    return names


def _block_digests(path: Path) -> list[bytes]:
    digests = []
    with path.open("rb") as handle:
        while block := handle.read(MIB):
            digests.append(hashlib.sha256(block).digest())
    return digests


def _changed_blocks(before: list[bytes], after: list[bytes]) -> list[int]:
    assert len(before) == len(after)
    return [index for index, (old, new) in enumerate(zip(before, after, strict=True)) if old != new]


def test_real_tools_are_installed() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if corpus._find_tool(tool) is None]
    assert not missing, f"missing {missing}: apt-get install qemu-utils ntfs-3g"
    assert corpus.have_real_tools()


def test_real_volume_passes_qemu_img_check_and_ntfsls_lists_files(tmp_path: Path) -> None:
    root = tmp_path / "ds1"
    vol = corpus.make_volume(root, "cloudvolumes/apps/Office!20!2016.vmdk", size_mib=64, seed=1, real=True)

    assert vol.descriptor == root / "cloudvolumes/apps/Office!20!2016.vmdk"
    assert vol.extents == (root / "cloudvolumes/apps/Office!20!2016-flat.vmdk",)
    check = _qemu_check(vol)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors" in check.stdout
    text = vol.descriptor.read_text()
    assert 'createType="monolithicFlat"' in text
    assert 'RW 131072 FLAT "Office!20!2016-flat.vmdk" 0' in text
    assert vol.flat.stat().st_size == 64 * MIB

    names = _ntfs_names(vol)
    assert {"snapvol.cfg", "version.txt", "allvm.bat"} <= names.keys()
    assert sum(name.endswith(".dll") for name in names) >= 3
    assert sum(name.endswith(".cab") for name in names) >= 2
    assert len(names) >= 30


def test_real_volume_is_mostly_free_space_with_mixed_content(tmp_path: Path) -> None:
    vol = corpus.make_volume(tmp_path / "ds1", "appvolumes/apps/Mix.vmdk", size_mib=32, seed=2, real=True)
    data = vol.flat.read_bytes()
    blocks = [data[offset : offset + MIB] for offset in range(0, len(data), MIB)]
    empty = sum(block.count(0) == len(block) for block in blocks)
    assert empty >= len(blocks) // 3, "an AppStack should be mostly free space"
    assert vol.flat.stat().st_blocks * 512 < vol.flat.stat().st_size, "the flat file should stay sparse"

    names = _ntfs_names(vol)
    dll = next(name for name in names if name.endswith(".dll"))
    cab = next(name for name in names if name.endswith(".cab"))
    ratios = {}
    for name in (dll, cab):
        content = subprocess.run(
            [_tool("ntfscat"), "-f", str(vol.flat), f"/{name}"], capture_output=True, check=True
        ).stdout
        assert len(content) == names[name]
        ratios[name] = len(zlib.compress(content)) / len(content)
    assert ratios[dll] < 0.7, "DLL-like data should compress"
    assert ratios[cab] > 0.99, "cabinet-like data should not compress"


def test_sidecars_follow_the_reference(tmp_path: Path) -> None:
    root = tmp_path / "SSD01"
    appstack = corpus.make_volume(root, "cloudvolumes/apps/Office!20!2016.vmdk", size_mib=8, seed=3)
    package = corpus.make_volume(
        root, "appvolumes/packages/Google!20!Chrome!20!104.vmdk", size_mib=8, seed=4, kind="package"
    )

    assert appstack.sidecars == (root / "cloudvolumes/apps/Office!20!2016.vmdk.metadata",)
    metadata = appstack.sidecars[0].read_text()
    assert metadata.startswith("---\n")
    assert ':template_file_name: "[SSD01] cloudvolumes/apps_templates/template.vmdk"' in metadata
    assert ':name: "Office 2016"' in metadata
    assert ":volume_guid: " in metadata

    assert [path.name for path in package.sidecars] == [
        "Google!20!Chrome!20!104.vmdk.metadata",
        "Google!20!Chrome!20!104.json",
    ]
    document = json.loads(package.sidecars[1].read_text())
    assert document["package"]["name"] == "Google Chrome 104"
    assert document["package"]["template_file_name"] == "[SSD01] appvolumes/packages_templates/template.vmdk"
    assert f':volume_guid: "{document["package"]["guid"]}"' in package.sidecars[0].read_text()


def test_no_sidecars_when_asked(tmp_path: Path) -> None:
    vol = corpus.make_volume(tmp_path / "ds", "cloudvolumes/apps/Legacy.vmdk", size_mib=8, sidecars=False)
    assert vol.sidecars == ()
    assert sorted(path.name for path in vol.descriptor.parent.iterdir()) == [
        "Legacy-flat.vmdk",
        "Legacy.vmdk",
    ]


def test_same_seed_gives_the_same_volume(tmp_path: Path) -> None:
    relpath = "cloudvolumes/apps/Same.vmdk"
    first = corpus.make_volume(tmp_path / "a" / "ds", relpath, size_mib=16, seed=5, real=True)
    second = corpus.make_volume(tmp_path / "b" / "ds", relpath, size_mib=16, seed=5, real=True)
    other = corpus.make_volume(tmp_path / "c" / "ds", relpath, size_mib=16, seed=6, real=True)

    assert first.descriptor.read_text() == second.descriptor.read_text()
    assert [p.read_text() for p in first.sidecars] == [p.read_text() for p in second.sidecars]
    assert _ntfs_names(first) == _ntfs_names(second)
    assert [p.read_text() for p in first.sidecars] != [p.read_text() for p in other.sidecars]
    fallback_a = corpus.make_volume(tmp_path / "d" / "ds", relpath, size_mib=16, seed=5, real=False)
    fallback_b = corpus.make_volume(tmp_path / "e" / "ds", relpath, size_mib=16, seed=5, real=False)
    assert fallback_a.flat.read_bytes() == fallback_b.flat.read_bytes()


@pytest.mark.parametrize("real", [True, False], ids=["real", "fallback"])
def test_modify_volume_changes_some_blocks_but_not_most(tmp_path: Path, real: bool) -> None:
    vol = corpus.make_volume(tmp_path / "ds", "cloudvolumes/apps/Upd.vmdk", size_mib=64, seed=7, real=real)
    before = _block_digests(vol.flat)
    cid_before = corpus.read_cid(vol.descriptor)
    mtime_before = vol.flat.stat().st_mtime_ns

    corpus.modify_volume(vol, seed=8, fraction=0.05)

    changed = _changed_blocks(before, _block_digests(vol.flat))
    assert 1 <= len(changed) <= len(before) // 4, changed
    assert corpus.read_cid(vol.descriptor) != cid_before
    assert vol.flat.stat().st_mtime_ns > mtime_before
    check = _qemu_check(vol)
    assert check.returncode == 0, check.stdout + check.stderr
    if real:
        names = _ntfs_names(vol)
        assert "update8_0.dll" in names
        assert 0 in names.values(), "one file should have been emptied"


def test_fallback_descriptor_is_a_valid_monolithic_flat_vmdk(tmp_path: Path) -> None:
    vol = corpus.make_volume(tmp_path / "ds", "appvolumes/packages/Fall!20!Back.vmdk", size_mib=16, real=False)
    info = subprocess.run(
        [_tool("qemu-img"), "info", "--output=json", str(vol.descriptor)],
        capture_output=True,
        text=True,
        check=True,
    )
    parsed = json.loads(info.stdout)
    assert parsed["format"] == "vmdk"
    assert parsed["virtual-size"] == 16 * MIB
    assert parsed["format-specific"]["data"]["create-type"] == "monolithicFlat"
    assert corpus.extent_files(vol.descriptor) == vol.extents
    assert _qemu_check(vol).returncode == 0
    assert vol.flat.read_bytes()[3:11] != b"NTFS    ", "the fallback must not pass for NTFS"


def test_clone_update_copies_renames_and_modifies(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    src = corpus.make_volume(root, "cloudvolumes/apps/Google!20!Chrome!20!104.vmdk", size_mib=32, seed=9)
    src_digests = _block_digests(src.flat)
    src_texts = [path.read_text() for path in (src.descriptor, *src.sidecars)]

    clone = corpus.clone_update(root, src, "cloudvolumes/apps/Google!20!Chrome!20!104-update.vmdk", seed=10)

    assert clone.extents == (root / "cloudvolumes/apps/Google!20!Chrome!20!104-update-flat.vmdk",)
    assert corpus.extent_files(clone.descriptor) == clone.extents
    assert [path.name for path in clone.sidecars] == ["Google!20!Chrome!20!104-update.vmdk.metadata"]
    metadata = clone.sidecars[0].read_text()
    assert ':name: "Google Chrome 104-update"' in metadata
    assert metadata.split(":volume_guid:")[1] != src_texts[1].split(":volume_guid:")[1]
    assert _block_digests(src.flat) == src_digests, "the source must not change"
    assert [path.read_text() for path in (src.descriptor, *src.sidecars)] == src_texts
    changed = _changed_blocks(src_digests, _block_digests(clone.flat))
    assert 1 <= len(changed) <= len(src_digests) // 2
    assert _qemu_check(clone).returncode == 0
    assert "update10_0.dll" in _ntfs_names(clone)


def test_make_datastore_2x_layout(tmp_path: Path) -> None:
    root = tmp_path / "SSD01"
    volumes = corpus.make_datastore(root, flavour="2.x", count=3, size_mib=16, seed=1)

    relpaths = [vol.descriptor.relative_to(root).as_posix() for vol in volumes]
    assert relpaths == [
        "cloudvolumes/apps/Office!20!2016.vmdk",
        "cloudvolumes/apps/Adobe!20!Reader!20!DC.vmdk",
        "cloudvolumes/apps/Team Apps/Google!20!Chrome!20!104.vmdk",
        "cloudvolumes/writable/CORP!5C!jdoe.vmdk",
    ]
    assert all(len(vol.sidecars) == 1 for vol in volumes)
    assert "writable_templates" in volumes[-1].sidecars[0].read_text()
    assert ':owner_name: "CORP\\\\jdoe"' in volumes[-1].sidecars[0].read_text()
    assert all(_qemu_check(vol).returncode == 0 for vol in volumes)


def test_make_datastore_4x_layout(tmp_path: Path) -> None:
    root = tmp_path / "vsanDatastore"
    volumes = corpus.make_datastore(root, flavour="4.x", count=2, size_mib=8, seed=2, real=False)

    relpaths = [vol.descriptor.relative_to(root).as_posix() for vol in volumes]
    assert relpaths == [
        "appvolumes/packages/Office!20!2016.vmdk",
        "appvolumes/packages/Adobe!20!Reader!20!DC.vmdk",
        "appvolumes/writables/CORP!5C!jdoe.vmdk",
    ]
    assert [len(vol.sidecars) for vol in volumes] == [2, 2, 1]
    assert volumes[0].sidecars[1].suffix == ".json"


def test_escape_names_like_avm() -> None:
    assert corpus.escape_name("Google Chrome 104-update") == "Google!20!Chrome!20!104-update"
    assert corpus.escape_name("PHARMAX\\jocolon") == "PHARMAX!5C!jocolon"
    for name in ("Office 2016", "Notepad++ 8.4", "Café (x64)"):
        assert corpus.unescape_name(corpus.escape_name(name)) == name


def test_bad_requests_raise_lab_errors(tmp_path: Path) -> None:
    with pytest.raises(corpus.CorpusInvalid):
        corpus.make_volume(tmp_path, "apps/x.vmdk", kind="bogus")
    with pytest.raises(corpus.CorpusInvalid):
        corpus.make_volume(tmp_path, "apps/x-flat.vmdk")
    with pytest.raises(corpus.CorpusInvalid):
        corpus.make_volume(tmp_path, "../x.vmdk")
    with pytest.raises(corpus.CorpusInvalid):
        corpus.make_datastore(tmp_path, flavour="3.x")
