"""The files of one App Volumes volume on a datastore directory.

A volume ``<base>`` in a folder is a text descriptor ``<base>.vmdk`` whose extent lines
name the data files (``<base>-flat.vmdk`` and friends), plus the manager's sidecars:
``<base>.vmdk.metadata`` (YAML with Ruby symbol keys) and, for 4.x packages, ``<base>.json``.
Everything here works on plain paths so the same code serves import, replication,
deletion and the admin hooks.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from toolkit.lab.avm_sim.errors import DescriptorUnreadable

SECTOR_BYTES: Final = 512  # VMDK extents count 512-byte sectors
COPY_BLOCK_BYTES: Final = 1 << 20  # block size for the sparse-aware copy
SPARSE_MAGIC: Final = b"KDMV"  # hosted sparse extent header ("VMDK" little endian)
DESCRIPTOR_MAX_BYTES: Final = 64 * 1024  # a text descriptor is a few hundred bytes; refuse huge files

# Extent files never count as volumes of their own: -flat, -delta, -ctk, -sesparse, -sNNN, -fNNN.
_EXTENT_NAME: Final = re.compile(r"-(?:flat|delta|ctk|sesparse|s\d{3}|f\d{3})\.vmdk$", re.IGNORECASE)
_EXTENT_LINE: Final = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_SAFE_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_ESCAPED_BYTE: Final = re.compile(r"!([0-9A-Fa-f]{2})!")
_META_LINE: Final = re.compile(r"^:([A-Za-z_][A-Za-z0-9_]*):(?:\s+(.*))?$")
_HEADS: Final = 255  # geometry ESXi writes for lsilogic disks
_SECTORS_PER_TRACK: Final = 63  # likewise


@dataclass(frozen=True, slots=True)
class Extent:
    """One extent line of a descriptor: ``ACCESS SECTORS TYPE "FILE" [OFFSET]``."""

    access: str
    sectors: int
    kind: str
    filename: str | None
    offset: int = 0

    @property
    def is_remote(self) -> bool:
        """A vSAN object (``vsan://``) has no file next to the descriptor."""
        return self.filename is not None and "://" in self.filename


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What the simulator needs from a VMDK descriptor."""

    create_type: str
    cid: str
    extents: tuple[Extent, ...]
    embedded: bool = False  # a hosted sparse file carries its own data

    @property
    def size_bytes(self) -> int:
        return sum(e.sectors for e in self.extents) * SECTOR_BYTES


@dataclass(frozen=True, slots=True)
class VolumeFiles:
    """The files that make up one volume, whether or not each exists."""

    descriptor: Path
    extents: tuple[Path, ...]
    metadata: Path
    package_json: Path

    @property
    def base(self) -> str:
        return self.descriptor.name[: -len(".vmdk")]


def is_descriptor_name(name: str) -> bool:
    """True for ``x.vmdk``; false for extents (``x-flat.vmdk``…) and other files."""
    return name.lower().endswith(".vmdk") and not _EXTENT_NAME.search(name)


def escape_volume_name(name: str) -> str:
    """File base name the manager derives from a volume name (``a b`` → ``a!20!b``)."""
    out: list[str] = []
    for ch in name:
        if ch in _SAFE_NAME_CHARS:
            out.append(ch)
        else:
            out.extend(f"!{b:02X}!" for b in ch.encode("utf-8"))
    return "".join(out)


def unescape_volume_name(base: str) -> str:
    """Inverse of :func:`escape_volume_name`."""
    raw = bytearray()
    pos = 0
    for m in _ESCAPED_BYTE.finditer(base):
        raw.extend(base[pos : m.start()].encode("utf-8"))
        raw.append(int(m.group(1), 16))
        pos = m.end()
    raw.extend(base[pos:].encode("utf-8"))
    return raw.decode("utf-8", errors="replace")


def parse_descriptor(text: str) -> Descriptor:
    """Read the create type, content id and extent lines of a text descriptor."""
    create_type = ""
    cid = ""
    extents: list[Extent] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("createType="):
            create_type = stripped.split("=", 1)[1].strip().strip('"')
        elif stripped.startswith("CID="):
            cid = stripped.split("=", 1)[1].strip()
        else:
            m = _EXTENT_LINE.match(line)
            if m:
                access, sectors, kind, filename, offset = m.groups()
                extents.append(Extent(access, int(sectors), kind, filename, int(offset or 0)))
    return Descriptor(create_type=create_type, cid=cid, extents=tuple(extents))


def read_descriptor(path: Path) -> Descriptor:
    """Parse a descriptor file; a hosted sparse VMDK reports its capacity as one embedded extent."""
    with path.open("rb") as f:
        head = f.read(DESCRIPTOR_MAX_BYTES + 1)
    if head.startswith(SPARSE_MAGIC):
        capacity = int.from_bytes(head[12:20], "little")
        extent = Extent("RW", capacity, "SPARSE", path.name)
        return Descriptor(create_type="monolithicSparse", cid="", extents=(extent,), embedded=True)
    if len(head) > DESCRIPTOR_MAX_BYTES or b"\0" in head:
        raise DescriptorUnreadable(path=path, detail="binary or oversized file")
    descriptor = parse_descriptor(head.decode("utf-8", errors="replace"))
    if not descriptor.extents:
        raise DescriptorUnreadable(path=path, detail="no extent lines")
    return descriptor


def volume_files(descriptor_path: Path) -> VolumeFiles:
    """Every file of the volume whose descriptor is ``descriptor_path``.

    Extents come from the descriptor when it is readable, else the usual ``-flat`` name.
    """
    base = descriptor_path.name[: -len(".vmdk")]
    folder = descriptor_path.parent
    extents: tuple[Path, ...] = (folder / f"{base}-flat.vmdk",)
    if descriptor_path.exists():
        try:
            descriptor = read_descriptor(descriptor_path)
        except DescriptorUnreadable:
            descriptor = None
        if descriptor is not None:
            extents = tuple(
                folder / e.filename
                for e in descriptor.extents
                if e.filename and not e.is_remote and not descriptor.embedded
            )
    return VolumeFiles(
        descriptor=descriptor_path,
        extents=extents,
        metadata=folder / f"{base}.vmdk.metadata",
        package_json=folder / f"{base}.json",
    )


def missing_extents(files: VolumeFiles) -> list[Path]:
    return [p for p in files.extents if not p.exists()]


def scan_descriptors(folder: Path) -> list[Path]:
    """Descriptor files directly inside ``folder`` (not recursive), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_descriptor_name(p.name))


def new_cid() -> str:
    return secrets.token_hex(4)


def format_descriptor(sectors: int, flat_name: str, *, create_type: str = "vmfs", cid: str = "") -> str:
    """A descriptor like ESXi (``vmfs``) or ``qemu-img`` (``monolithicFlat``) writes."""
    cid = cid or new_cid()
    if create_type == "monolithicFlat":
        extent = f'RW {sectors} FLAT "{flat_name}" 0'
    else:
        extent = f'RW {sectors} VMFS "{flat_name}"'
    uuid_bytes = secrets.token_bytes(16).hex()
    uuid = " ".join(uuid_bytes[i : i + 2] for i in range(0, 16, 2)) + "-"
    uuid += " ".join(uuid_bytes[i : i + 2] for i in range(16, 32, 2))
    return "\n".join(
        [
            "# Disk DescriptorFile",
            "version=1",
            'encoding="UTF-8"',
            f"CID={cid}",
            "parentCID=ffffffff",
            'isNativeSnapshot="no"',
            f'createType="{create_type}"',
            "",
            "# Extent description",
            extent,
            "",
            "# The Disk Data Base",
            "#DDB",
            "",
            'ddb.adapterType = "lsilogic"',
            f'ddb.geometry.cylinders = "{_cylinders(sectors)}"',
            f'ddb.geometry.heads = "{_HEADS}"',
            f'ddb.geometry.sectors = "{_SECTORS_PER_TRACK}"',
            f'ddb.longContentID = "{secrets.token_hex(12)}{cid}"',
            'ddb.thinProvisioned = "1"',
            f'ddb.uuid = "{uuid}"',
            'ddb.virtualHWVersion = "11"',
            "",
        ]
    )


def _cylinders(sectors: int) -> int:
    return max(1, sectors // (_HEADS * _SECTORS_PER_TRACK))


def resize_descriptor(text: str, sectors: int) -> str:
    """Give the (single) extent line a new size and update the geometry to match."""
    lines = []
    for line in text.splitlines():
        m = _EXTENT_LINE.match(line)
        if m:
            line = line.replace(f" {m.group(2)} ", f" {sectors} ", 1)
        elif line.strip().startswith("ddb.geometry.cylinders"):
            line = f'ddb.geometry.cylinders = "{_cylinders(sectors)}"'
        lines.append(line)
    return "\n".join(lines) + "\n"


def replace_cid(text: str, cid: str) -> str:
    """New content id, as ESXi writes after the first write following an open."""
    return re.sub(r"(?m)^CID=\w+$", f"CID={cid}", text)


def parse_metadata(text: str) -> dict[str, object]:
    """Read ``.vmdk.metadata``: one ``:key: value`` per line; other lines are ignored.

    Values may be double-quoted (JSON-compatible escapes), single-quoted, numbers,
    ``true``/``false`` or ``nil``/``~``. Unknown keys are kept.
    """
    out: dict[str, object] = {}
    for line in text.splitlines():
        m = _META_LINE.match(line.rstrip())
        if m:
            out[m.group(1)] = _metadata_value((m.group(2) or "").strip())
    return out


def _metadata_value(raw: str) -> object:
    if raw in ("", "~", "nil", "null"):
        return None
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw[1:-1]
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        return raw[1:-1].replace("''", "'")
    if raw in ("true", "false"):
        return raw == "true"
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    return raw


def format_metadata(values: dict[str, object]) -> str:
    """Write a ``.vmdk.metadata`` document (``---`` header, symbol keys, quoted strings)."""
    lines = ["---"]
    for key, value in values.items():
        if value is None:
            rendered = "nil"
        elif isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int):
            rendered = str(value)
        else:
            rendered = json.dumps(str(value))
        lines.append(f":{key}: {rendered}")
    return "\n".join(lines) + "\n"


def read_metadata(path: Path) -> dict[str, object] | None:
    if not path.is_file():
        return None
    return parse_metadata(path.read_text(encoding="utf-8", errors="replace"))


def read_package_json(path: Path) -> dict[str, object] | None:
    """The 4.x package ``.json``; anything that is not a JSON object counts as absent."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_volume(
    folder: Path,
    base: str,
    size_bytes: int,
    *,
    create_type: str = "vmfs",
    metadata: dict[str, object] | None = None,
    package_json: dict[str, object] | None = None,
    content: bytes = b"",
) -> VolumeFiles:
    """Create a volume: sparse flat extent, sidecars, then the descriptor (last, so a scan never
    sees a descriptor without its data)."""
    folder.mkdir(parents=True, exist_ok=True)
    sectors = max(1, -(-size_bytes // SECTOR_BYTES))
    flat = folder / f"{base}-flat.vmdk"
    with flat.open("wb") as f:
        f.truncate(sectors * SECTOR_BYTES)
        if content:
            f.write(content[: sectors * SECTOR_BYTES])
    files = volume_files(folder / f"{base}.vmdk")
    if metadata is not None:
        write_text_atomic(files.metadata, format_metadata(metadata))
    if package_json is not None:
        write_text_atomic(files.package_json, json.dumps(package_json, indent=2) + "\n")
    descriptor = format_descriptor(sectors, flat.name, create_type=create_type)
    write_text_atomic(files.descriptor, descriptor)
    return volume_files(files.descriptor)


def delete_volume(descriptor_path: Path) -> list[Path]:
    """Remove the descriptor, its extents and sidecars; returns what was removed."""
    files = volume_files(descriptor_path)
    removed: list[Path] = []
    for path in [files.descriptor, *files.extents, files.metadata, files.package_json]:
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


def copy_volume(descriptor_path: Path, dest_folder: Path) -> VolumeFiles:
    """Copy a volume to another folder: extents and sidecars first, the descriptor last."""
    files = volume_files(descriptor_path)
    dest_folder.mkdir(parents=True, exist_ok=True)
    for src in [*files.extents, files.metadata, files.package_json]:
        if src.exists():
            copy_sparse(src, dest_folder / src.name)
    copy_sparse(files.descriptor, dest_folder / files.descriptor.name)
    return volume_files(dest_folder / files.descriptor.name)


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy a file keeping holes as holes (thin flat extents stay thin), via a temp name."""
    tmp = dst.with_name(f".{dst.name}.tmp-{secrets.token_hex(4)}")
    size = src.stat().st_size
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            for start, end in _data_ranges(fin.fileno(), size):
                fin.seek(start)
                fout.seek(start)
                _copy_range(fin, fout, end - start)
            fout.truncate(size)
        shutil.copystat(src, tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_range(fin: BinaryIO, fout: BinaryIO, length: int) -> None:
    zero = bytes(COPY_BLOCK_BYTES)
    remaining = length
    while remaining > 0:
        block = fin.read(min(COPY_BLOCK_BYTES, remaining))
        if not block:
            break
        if block == zero[: len(block)]:
            fout.seek(len(block), os.SEEK_CUR)
        else:
            fout.write(block)
        remaining -= len(block)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """Ranges holding data, found with SEEK_DATA/SEEK_HOLE where the platform has them."""
    if not hasattr(os, "SEEK_DATA"):
        return [(0, size)]
    ranges: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, min(end, size)))
            pos = end
    except OSError:  # ENXIO: no data after pos
        pass
    return ranges


def allocated_bytes(path: Path) -> int:
    """Bytes actually allocated on disk (a thin extent's used space)."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0
