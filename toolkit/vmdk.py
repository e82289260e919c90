"""VMDK descriptors and App Volumes on-datastore naming. Pure functions."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from catalog.errors import Error

DESCRIPTOR_MAX_BYTES: Final = 64 << 10  # text descriptors are a few hundred bytes; anything bigger is not one
SPARSE_MAGIC: Final = b"KDMV"  # monolithicSparse / streamOptimized: one self-contained file

# Extent and helper files that belong to a descriptor, never descriptors themselves.
EXTENT_NAME: Final = re.compile(r"-(flat|delta|ctk|sesparse|rdm|rdmp|s\d{3}|f\d{3})\.vmdk$", re.IGNORECASE)
EXTENT_LINE: Final = re.compile(
    r"^\s*(RW|RDONLY|NOACCESS)\s+(\d{1,19})\s+(FLAT|SPARSE|ZERO|VMFS|VMFSSPARSE|VMFSRDM|VMFSRAW|SESPARSE)"
    r'(?:\s+"([^"]+)"(?:\s+(\d{1,19}))?)?\s*$',
    re.IGNORECASE,
)
ESCAPE: Final = re.compile(r"!([0-9A-Fa-f]{2})!")


class NotADescriptor(Error):
    template = "{path} is not a VMDK descriptor: {detail}"
    hint = "remove or rename the file if it is not a disk; it is skipped until then"
    code = "not_a_descriptor"
    exit_code = 1


@dataclass(frozen=True, slots=True)
class Extent:
    access: str
    sectors: int
    kind: str
    filename: str | None
    offset: int


@dataclass(frozen=True, slots=True)
class Descriptor:
    create_type: str
    cid: str | None
    extents: tuple[Extent, ...]

    @property
    def sectors(self) -> int:
        return sum(e.sectors for e in self.extents)


def is_extent_name(name: str) -> bool:
    return bool(EXTENT_NAME.search(name))


def is_descriptor_name(name: str) -> bool:
    return name.lower().endswith(".vmdk") and not is_extent_name(name)


def parse_descriptor(path: str, data: bytes) -> Descriptor | None:
    """Parse a text descriptor; None for a self-contained sparse VMDK; NotADescriptor otherwise."""
    if data[:4] == SPARSE_MAGIC:
        return None
    if len(data) >= DESCRIPTOR_MAX_BYTES:
        raise NotADescriptor(path=path, detail="too large for a text descriptor")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotADescriptor(path=path, detail="not text") from None
    create_type: str | None = None
    cid: str | None = None
    extents: list[Extent] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if m := EXTENT_LINE.match(line):
            extents.append(Extent(m[1].upper(), int(m[2]), m[3].upper(), m[4], int(m[5]) if m[5] else 0))
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip()
        if key == "createType":
            create_type = _unquote(value)
        elif key == "CID":
            cid = value.strip()
    if create_type is None:
        raise NotADescriptor(path=path, detail="no createType line")
    if not extents:
        raise NotADescriptor(path=path, detail="no extent lines")
    return Descriptor(create_type, cid, tuple(extents))


def _unquote(value: str) -> str:
    value = value.strip()
    try:
        parts = shlex.split(value)
    except ValueError:
        return value.strip('"')
    return parts[0] if parts else ""


def decode_name(filename: str) -> str:
    """Display name of a volume file: '!20!' style escapes decoded, '.vmdk' dropped."""
    stem = filename[:-5] if filename.lower().endswith(".vmdk") else filename
    return ESCAPE.sub(lambda m: chr(int(m[1], 16)), stem)


def volume_kind(relpath: str) -> str:
    """appstack | package | writable | unmanaged, from the App Volumes folder layout."""
    parts = [p.lower() for p in PurePosixPath(relpath).parts[:-1]]
    joined = "/".join(parts)
    if "writable" in joined or "writables" in joined:
        return "writable"
    if "cloudvolumes/apps" in joined or joined.endswith("/apps") or joined == "apps":
        return "appstack"
    if "appvolumes/packages" in joined or joined.endswith("packages"):
        return "package"
    return "unmanaged"


def sidecar_names(descriptor_name: str) -> tuple[str, ...]:
    """Sidecars App Volumes keeps beside a volume: '<base>.vmdk.metadata' and '<base>.json'."""
    base = descriptor_name[:-5] if descriptor_name.lower().endswith(".vmdk") else descriptor_name
    return (f"{descriptor_name}.metadata", f"{base}.json")
