"""VMDK descriptors and App Volumes on-datastore naming. Pure functions."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Final

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
VSAN_SCHEME: Final = "vsan://"  # an extent that is a vSAN object, not a file beside the descriptor
SAFE_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
METADATA_LINE: Final = re.compile(r"^(:[A-Za-z_][A-Za-z0-9_]*:)([ \t]+)(.*?)([ \t]*)$")
GUID_KEYS: Final = ("volume_guid", "guid")  # keys that hold the volume's own GUID when they equal it
NAME_KEYS: Final = ("name", "package_name")  # beside such a GUID: the volume's own name


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


def encode_name(name: str) -> str:
    """File base name App Volumes derives from a volume name: each byte outside [A-Za-z0-9._-] as '!XX!'."""
    out: list[str] = []
    for ch in name:
        if ch in SAFE_NAME_CHARS:
            out.append(ch)
        else:
            out.extend(f"!{b:02X}!" for b in ch.encode("utf-8"))
    return "".join(out)


def renamed_extent(filename: str, old_base: str, new_base: str) -> str:
    """The name an extent file takes when its descriptor ``<old_base>.vmdk`` becomes ``<new_base>.vmdk``.

    ``<old_base>-flat.vmdk`` becomes ``<new_base>-flat.vmdk``; an extent named otherwise
    keeps its name behind the new base (``<new_base>-<name>``), so it still reads as an extent.
    """
    folder, _, name = filename.rpartition("/")
    new = new_base + name[len(old_base) :] if name.startswith(old_base) else f"{new_base}-{name}"
    return f"{folder}/{new}" if folder else new


def rewrite_extent_names(path: str, data: bytes, rename: Callable[[str], str]) -> bytes:
    """The descriptor with each extent's file name replaced by ``rename(name)``; every other byte unchanged.

    A self-contained sparse VMDK is returned as it is (its data is the file itself), and so are
    extents that are not files (``vsan://`` objects).
    """
    if parse_descriptor(path, data) is None:
        return data
    out: list[str] = []
    for line in data.decode("utf-8").splitlines(keepends=True):
        body = line.rstrip("\r\n")
        m = EXTENT_LINE.match(body)
        if m and m[4] and "://" not in m[4]:
            body = body[: m.start(4)] + rename(m[4]) + body[m.end(4) :]
        out.append(body + line[len(line.rstrip("\r\n")) :])
    return "".join(out).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Renaming:
    """A volume written under a new file name, and the identity the copy takes in its sidecars."""

    old_file: str  # descriptor file name, e.g. 'Office!20!2016.vmdk'
    new_file: str
    old_name: str  # display name
    new_name: str
    old_guid: str = ""  # the volume GUID recorded at capture ('' when unknown)
    new_guid: str = ""  # the GUID the copy gets ('' leaves GUIDs alone)


def _same_guid(a: str, b: str) -> bool:
    return bool(a and b) and a.strip().strip("{}").lower() == b.strip().strip("{}").lower()


def _guid_like(old: str, new: str) -> str:
    """``new`` written the way ``old`` is: braces and letter case kept."""
    bare = new.strip().strip("{}")
    bare = bare.upper() if old.strip("{}").isupper() else bare.lower()
    return "{" + bare + "}" if old.strip().startswith("{") else bare


def _file_reference(value: str, r: Renaming) -> str:
    """``value`` with a reference to the volume's own file (``x.vmdk``, ``…/x.vmdk``, ``[ds] …/x.vmdk``) renamed."""
    if value == r.old_file:
        return r.new_file
    for sep in ("/", "] "):
        if value.endswith(sep + r.old_file):
            return value[: -len(r.old_file)] + r.new_file
    return value


def _metadata_value(raw: str) -> tuple[str, str] | None:
    """(text, quoting) of a ``.vmdk.metadata`` scalar that is a string; None for anything else."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return (value, '"') if isinstance(value, str) else None
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'"), "'"
    if raw in ("", "~", "nil", "null", "true", "false") or re.fullmatch(r"-?\d+(\.\d+)?", raw):
        return None
    return raw, ""


def _metadata_scalar(value: str, quoting: str) -> str:
    if quoting == "'":
        return "'" + value.replace("'", "''") + "'"
    if quoting == "" and value and all(c in SAFE_NAME_CHARS or c in "{}[] /:" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def rewrite_metadata(data: bytes, r: Renaming) -> bytes:
    """A ``.vmdk.metadata`` sidecar for the renamed copy; lines that need no change keep their bytes.

    ``:name:`` takes the new display name, a ``:volume_guid:``/``:guid:`` equal to the recorded GUID
    takes the new one (when one is given), and any value naming the volume's own file is renamed.
    ``:template_file_name:`` names the template the volume was made from and stays as it is.
    """
    out: list[str] = []
    for line in data.decode("utf-8", errors="surrogateescape").splitlines(keepends=True):
        body = line.rstrip("\r\n")
        m = METADATA_LINE.match(body)
        parsed = _metadata_value(m[3]) if m else None
        if m and parsed is not None:
            key = m[1].strip(":")
            value, quoting = parsed
            new = value
            if key == "name":
                new = r.new_name
            elif key in GUID_KEYS and r.new_guid and (_same_guid(value, r.old_guid) or not r.old_guid):
                new = _guid_like(value, r.new_guid)
            elif key != "template_file_name":
                new = _file_reference(value, r)
            if new != value:
                body = f"{m[1]}{m[2]}{_metadata_scalar(new, quoting)}{m[4]}"
        out.append(body + line[len(line.rstrip("\r\n")) :])
    return "".join(out).encode("utf-8", errors="surrogateescape")


def rewrite_package_json(data: bytes, r: Renaming) -> bytes | None:
    """A 4.x package ``.json`` for the renamed copy, or None when it is not a JSON document.

    The object that holds the volume's recorded GUID describes the volume: its GUID and its name
    (when equal to the old one) take the new values. Other objects (the application) stay as they
    are; strings naming the volume's own file are renamed wherever they are.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if isinstance(node, str):
            return _file_reference(node, r)
        if not isinstance(node, dict):
            return node
        own = any(isinstance(node.get(k), str) and _same_guid(node[k], r.old_guid) for k in GUID_KEYS)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if own and r.new_guid and key in GUID_KEYS and isinstance(value, str) and _same_guid(value, r.old_guid):
                out[key] = _guid_like(value, r.new_guid)
            elif own and key in NAME_KEYS and value == r.old_name:
                out[key] = r.new_name
            else:
                out[key] = walk(value)
        return out

    new = walk(doc)
    if new == doc:
        return data
    text = json.dumps(new, indent=2 if b"\n" in data.strip() else None, ensure_ascii=False)
    return (text + ("\n" if data.endswith(b"\n") else "")).encode("utf-8")


def metadata_guid(data: bytes) -> str:
    """The volume GUID a ``.vmdk.metadata`` sidecar holds (``:volume_guid:`` or ``:guid:``), or ''."""
    for line in data.decode("utf-8", errors="replace").splitlines():
        m = METADATA_LINE.match(line.rstrip())
        parsed = _metadata_value(m[3]) if m else None
        if m and parsed is not None and m[1].strip(":") in GUID_KEYS and parsed[0].strip():
            return parsed[0].strip()
    return ""
