"""Realistic AppStack, package and writable volumes for tests, benchmarks and ``toolkit demo``.

Two modes, chosen per call with ``real=`` (``None`` picks real mode when :func:`have_real_tools` says so):

- **Real mode** builds what App Volumes leaves on a datastore: ``qemu-img create -f vmdk -o
  subformat=monolithicFlat`` writes the descriptor and a sparse ``-flat.vmdk``, ``mkntfs`` formats the
  flat file as a whole-disk NTFS volume, and ``ntfscp`` copies app-like files into its root directory:
  many small text files (some small enough to stay resident in the MFT), a few DLL-like binaries
  (compressible), a few cabinet-like files (incompressible random data) and plenty of free space.
  The result passes ``qemu-img check`` and ``ntfsls -f`` lists the files. ntfs-3g's command-line tools
  cannot create directories or unlink files, so every file sits in the root directory and a file that
  an update "removes" is emptied instead (``ntfstruncate`` to 0 bytes).
- **Fallback mode** (pure Python, no tools needed) writes the same descriptor text and a sparse flat
  file holding the same payload bytes at cluster-aligned offsets behind a small fake file table. It is
  *not* an NTFS file system; it only has NTFS-like content for chunking, dedup and compression tests.

Determinism: for a given seed, kind and size the file names, file contents, descriptor and sidecars
are identical run after run. In real mode the NTFS metadata also carries the time ``ntfscp`` ran
(MFT timestamps), so two real volumes differ in a few metadata blocks; fallback volumes are
byte-identical.

Sidecars follow ``shared/reference/avm-api.md`` §8: ``<base>.vmdk.metadata`` is YAML with Ruby-symbol
keys (``:template_file_name:``, ``:volume_guid:``, ``:name:`` …), and 4.x packages also get a
``<base>.json``. Only ``:template_file_name:`` is confirmed by the reference; the other keys are a
plausible guess and consumers should treat both files as opaque.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import string
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Final

from catalog.errors import Error

KINDS: Final = ("appstack", "package", "writable")
FLAVOURS: Final = ("2.x", "4.x")
MIB: Final = 1024 * 1024
SECTOR_BYTES: Final = 512
CLUSTER_BYTES: Final = 4096  # mkntfs' default cluster size for small volumes; payload is laid out on it
MIN_SIZE_MIB: Final = 4  # mkntfs refuses much smaller volumes, and a smaller one holds no useful payload
USED_FRACTION: Final = 0.35  # AppStacks are mostly free space: templates are large, captures small
TOOL_TIMEOUT_S: Final = 120.0  # a hung tool becomes an error, not a stuck test run
REAL_TOOLS: Final = ("qemu-img", "mkntfs", "ntfscp", "ntfsls", "ntfscat", "ntfstruncate")
# ntfs-3g installs some tools in sbin, which is often off a non-root user's PATH
SBIN_DIRS: Final = ("/usr/sbin", "/sbin", "/usr/local/sbin")
# AVM keeps these characters in file names and escapes every other byte as !XX!
SAFE_NAME_CHARS: Final = frozenset(string.ascii_letters + string.digits + "._-")
FALLBACK_MAGIC: Final = b"\xebR\x90LABFAKE"  # where NTFS has "\xebR\x90NTFS    ": looks alike, never mistaken
FALLBACK_TABLE_OFFSET: Final = 4096  # the fake file table starts after the boot record's cluster
FALLBACK_RECORD_BYTES: Final = 1024  # one record per file, like an MFT record
WRITABLE_OWNER: Final = "CORP\\jdoe"  # a writable is named after its owner, DOMAIN\\user
CAPTURED_AT: Final = datetime(2016, 11, 23, 13, 10, 13, tzinfo=timezone(timedelta(hours=-8)))

_EXTENT_RE: Final = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]+)"(?:\s+(\d+))?\s*$')
_NTFSLS_RE: Final = re.compile(r"^\s*(\d+)\s+(\d+)\s+\S+\s+\d+\s+\S+\s+\d+\s(.+)$")
_ESCAPE_RE: Final = re.compile(r"((?:![0-9A-Fa-f]{2}!)+)")

_APP_NAMES: Final = (
    "Office 2016",
    "Adobe Reader DC",
    "Google Chrome 104",
    "Notepad++ 8.4",
    "7-Zip 22.01",
    "Visual Studio Code",
    "Slack 4.29",
    "Zoom Client 5.12",
)
_WORDS: Final = (
    "app", "volume", "client", "service", "update", "runtime", "shared", "config", "policy", "user",
    "profile", "cache", "plugin", "module", "version", "registry", "install", "package", "manifest",
    "component", "resource", "locale", "security", "network", "settings", "default", "enabled",
)  # fmt: skip


class CorpusToolMissing(Error):
    template = "{tool} is not installed; real AppStack volumes need qemu-img and the ntfs-3g tools"
    hint = "install them with: apt-get install qemu-utils ntfs-3g"
    code = "lab_corpus_tool_missing"


class CorpusToolFailed(Error):
    template = "{command} failed with exit code {rc}: {stderr}"
    hint = "check free space and that the volume is not in use by another process"
    code = "lab_corpus_tool_failed"


class CorpusInvalid(Error):
    template = "cannot build volume {path}: {detail}"
    hint = "see toolkit/lab/corpus.py for the accepted kinds, flavours and sizes"
    code = "lab_corpus_invalid"


@dataclass(frozen=True, slots=True)
class VolumeFiles:
    """The files of one volume on a datastore directory.

    ``descriptor`` is the ``.vmdk`` text descriptor, ``extents`` its data files (one ``-flat.vmdk``),
    ``sidecars`` the AVM files next to it (``.vmdk.metadata``, and ``.json`` for packages).
    """

    descriptor: Path
    extents: tuple[Path, ...]
    sidecars: tuple[Path, ...]

    @property
    def flat(self) -> Path:
        """The (single) flat extent."""
        return self.extents[0]

    @property
    def files(self) -> tuple[Path, ...]:
        """Descriptor, extents and sidecars, in that order."""
        return (self.descriptor, *self.extents, *self.sidecars)


@dataclass(frozen=True, slots=True)
class _Payload:
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class _NtfsFile:
    inode: int
    size_bytes: int
    name: str


# --- tools ------------------------------------------------------------------------------------------


def _find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN_DIRS:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def have_real_tools() -> bool:
    """True when qemu-img and the ntfs-3g tools (mkntfs, ntfscp, ntfsls, ntfscat, ntfstruncate) exist."""
    return all(_find_tool(tool) for tool in REAL_TOOLS)


def _run(tool: str, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    path = _find_tool(tool)
    if path is None:
        raise CorpusToolMissing(tool=tool)
    command = [path, *map(str, args)]
    result = subprocess.run(command, capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()[-2000:]
        raise CorpusToolFailed(command=" ".join(command), rc=result.returncode, stderr=stderr)
    return result


def _use_real(real: bool | None) -> bool:
    if real is None:
        return have_real_tools()
    if real:
        for tool in REAL_TOOLS:
            if _find_tool(tool) is None:
                raise CorpusToolMissing(tool=tool)
    return real


# --- names ------------------------------------------------------------------------------------------


def escape_name(name: str) -> str:
    """A volume name as AVM spells it in file names: ``"Google Chrome 104"`` → ``Google!20!Chrome!20!104``."""
    parts: list[str] = []
    for char in name:
        if char in SAFE_NAME_CHARS:
            parts.append(char)
        else:
            parts.extend(f"!{byte:02X}!" for byte in char.encode())
    return "".join(parts)


def unescape_name(stem: str) -> str:
    """The inverse of :func:`escape_name`."""

    def _decode(match: re.Match[str]) -> str:
        hex_bytes = match.group(1).replace("!", "")
        return bytes.fromhex(hex_bytes).decode(errors="replace")

    return _ESCAPE_RE.sub(_decode, stem)


def _base_of(descriptor: Path) -> str:
    return descriptor.name.removesuffix(".vmdk")


def _flavour_of(relpath: str, kind: str) -> str:
    top = relpath.split("/", 1)[0].lower()
    if top == "cloudvolumes":
        return "2.x"
    if top == "appvolumes":
        return "4.x"
    return "4.x" if kind == "package" else "2.x"


# --- descriptor -------------------------------------------------------------------------------------


def format_descriptor(flat_name: str, size_bytes: int, cid: int) -> str:
    """A monolithicFlat descriptor in the layout ``qemu-img create`` writes."""
    sectors = size_bytes // SECTOR_BYTES
    cylinders = min(sectors // (16 * 63), 16383)
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        f"CID={cid:08x}\n"
        "parentCID=ffffffff\n"
        'createType="monolithicFlat"\n'
        "\n"
        "# Extent description\n"
        f'RW {sectors} FLAT "{flat_name}" 0\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        'ddb.virtualHWVersion = "4"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        'ddb.geometry.heads = "16"\n'
        'ddb.geometry.sectors = "63"\n'
        'ddb.adapterType = "ide"\n'
        'ddb.toolsVersion = "2147483647"\n'
    )


def read_cid(descriptor: Path) -> int:
    """The content id (``CID=``) of a descriptor."""
    match = re.search(r"^CID=([0-9a-fA-F]{1,8})\s*$", descriptor.read_text(), re.MULTILINE)
    if match is None:
        raise CorpusInvalid(path=descriptor, detail="descriptor has no CID line")
    return int(match.group(1), 16)


def _write_cid(descriptor: Path, cid: int) -> None:
    text = descriptor.read_text()
    new_text, count = re.subn(r"^CID=[0-9a-fA-F]{1,8}[ \t]*$", f"CID={cid:08x}", text, flags=re.MULTILINE)
    if count != 1:
        raise CorpusInvalid(path=descriptor, detail="descriptor has no CID line")
    descriptor.write_text(new_text)


def extent_files(descriptor: Path) -> tuple[Path, ...]:
    """The extent files a descriptor names, resolved next to it."""
    extents = []
    for line in descriptor.read_text().splitlines():
        match = _EXTENT_RE.match(line.strip())
        if match:
            extents.append(descriptor.parent / match.group(4))
    if not extents:
        raise CorpusInvalid(path=descriptor, detail="descriptor has no extent line")
    return tuple(extents)


def _rename_extent(text: str, old: str, new: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        match = _EXTENT_RE.match(line.strip())
        if match and match.group(4) == old:
            line = line.replace(f'"{old}"', f'"{new}"')
        lines.append(line)
    return "".join(lines)


# --- payload ----------------------------------------------------------------------------------------


def _text_like(rng: random.Random, size: int, flavour: str) -> bytes:
    lines: list[str] = []
    total = 0
    while total < size:
        words = rng.choices(_WORDS, k=3)
        if flavour == "xml":
            line = f'  <file name="{words[0]}_{words[1]}.dll" hash="{rng.getrandbits(160):040x}" />'
        elif flavour == "reg":
            line = f'"{words[0].title()}{words[1].title()}"=dword:{rng.getrandbits(32):08x}'
        else:
            line = f"{words[0]}.{words[1]}={words[2]}_{rng.randint(0, 9999)}"
        lines.append(line)
        total += len(line) + 2
    return ("\r\n".join(lines) + "\r\n").encode()[:size]


def _dll_like(rng: random.Random, size: int) -> bytes:
    """Code-like bytes: a small vocabulary of instruction runs, UTF-16 strings and zero padding."""
    vocabulary = [rng.randbytes(rng.randint(2, 12)) for _ in range(384)]
    stub = b"This program cannot be run in DOS mode.\r\r\n$"
    header = b"MZ\x90\x00" + bytes(56) + stub + bytes(8) + b"PE\x00\x00"
    parts = [header]
    total = len(header)
    while total < size:
        pick = rng.random()
        if pick < 0.75:
            part = b"".join(rng.choices(vocabulary, k=256))
        elif pick < 0.92:
            part = " ".join(rng.choices(_WORDS, k=64)).encode("utf-16-le")
        else:
            part = bytes(CLUSTER_BYTES - total % CLUSTER_BYTES)
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


def _plan_payload(kind: str, size_mib: int, seed: int) -> list[_Payload]:
    """The files of a fresh volume: fixed config files, many small ones, a few large binaries."""
    rng = random.Random(f"corpus:{kind}:{size_mib}:{seed}")
    budget = int(size_mib * MIB * USED_FRACTION)
    stem = rng.choice(("msc", "app", "svc", "core", "rt"))
    payload = [
        _Payload("snapvol.cfg", _text_like(rng, 2048, "cfg")),
        _Payload("version.txt", f"{kind} lab volume {seed}\r\n".encode()),
    ]
    if kind == "writable":
        payload.append(_Payload("NTUSER.DAT", _dll_like(rng, max(CLUSTER_BYTES, budget // 8))))
        payload.append(_Payload("UsrClass.dat", _dll_like(rng, max(CLUSTER_BYTES, budget // 16))))
    else:
        payload.append(_Payload("allvm.bat", b"@echo off\r\nrem post-attach actions\r\n"))
        payload.append(_Payload("onpostprovision.bat", b"@echo off\r\nrem provisioning finished\r\n"))
    for index in range(24):
        flavour = ("xml", "reg", "cfg")[index % 3]
        extension = {"xml": "manifest", "reg": "reg", "cfg": "ini"}[flavour]
        size = rng.choice((300, 600, 2048, 6000, 12000, 16384))
        payload.append(_Payload(f"{stem}{index:03d}.{extension}", _text_like(rng, size, flavour)))
    remaining = budget - sum(len(item.data) for item in payload)
    for index in range(3):
        payload.append(_Payload(f"{stem}lib{index}.dll", _dll_like(rng, max(CLUSTER_BYTES, remaining // 6))))
    for index in range(2):
        payload.append(_Payload(f"{stem}data{index}.cab", rng.randbytes(max(CLUSTER_BYTES, remaining // 5))))
    return payload


def _payload_mtime(seed: int, index: int) -> float:
    return (CAPTURED_AT + timedelta(days=seed % 1500, minutes=index)).timestamp()


# --- sidecars ---------------------------------------------------------------------------------------


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "~"
    return json.dumps(str(value), ensure_ascii=False)


def format_metadata(fields: Sequence[tuple[str, object]]) -> str:
    """A ``.vmdk.metadata`` body: YAML with Ruby-symbol keys, as Ruby's ``YAML.dump`` writes a hash."""
    return "---\n" + "".join(f":{key}: {_yaml_scalar(value)}\n" for key, value in fields)


def _ruby_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %z")


def _template_path(flavour: str, kind: str) -> str:
    prefix = "cloudvolumes" if flavour == "2.x" else "appvolumes"
    if kind == "writable":
        folder = "writable_templates" if flavour == "2.x" else "writables_templates"
        return f"{prefix}/{folder}/template_uia_only_persistent.vmdk"
    folder = "packages_templates" if kind == "package" else "apps_templates"
    return f"{prefix}/{folder}/template.vmdk"


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _metadata_fields(
    name: str, kind: str, flavour: str, datastore: str, size_mib: int, seed: int
) -> list[tuple[str, object]]:
    rng = random.Random(f"sidecar:{kind}:{name}:{seed}")
    created = CAPTURED_AT + timedelta(days=seed % 1500, seconds=rng.randint(0, 86399))
    fields: list[tuple[str, object]] = [
        ("name", name),
        ("description", f"{name} ({kind})"),
        ("volume_guid", _guid(rng)),
        ("volume_type", kind),
        ("template_file_name", f"[{datastore}] {_template_path(flavour, kind)}"),
        ("template_version", "2.10.0" if flavour == "2.x" else "4.6.0"),
        ("capacity_mb", size_mib),
        ("created_at", _ruby_time(created)),
    ]
    if kind == "writable":
        fields += [("owner_name", name), ("owner_type", "User"), ("mount_prefix", None)]
    return fields


def _package_json(name: str, fields: Sequence[tuple[str, object]], seed: int) -> str:
    known = dict(fields)
    rng = random.Random(f"package:{name}:{seed}")
    programs = [
        {"name": f"{name} {part}", "version": f"{rng.randint(1, 30)}.{rng.randint(0, 9)}", "publisher": "Lab"}
        for part in ("Core", "Updater")
    ]
    document = {
        "format_version": 1,
        "package": {
            "name": name,
            "guid": known["volume_guid"],
            "version": "1.0",
            "stage": "Published",
            "created_at": known["created_at"],
            "capture_os": "Windows 10 (x64)",
            "capture_agent": "App Volumes Tools 4.6.0",
            "template_file_name": known["template_file_name"],
        },
        "application": {"name": name.rsplit(" ", 1)[0], "guid": _guid(rng)},
        "programs": programs,
    }
    return json.dumps(document, indent=2) + "\n"


def _write_sidecars(
    descriptor: Path, name: str, kind: str, flavour: str, datastore: str, size_mib: int, seed: int
) -> tuple[Path, ...]:
    fields = _metadata_fields(name, kind, flavour, datastore, size_mib, seed)
    metadata = descriptor.with_name(descriptor.name + ".metadata")
    metadata.write_text(format_metadata(fields))
    if kind != "package":
        return (metadata,)
    package = descriptor.with_name(_base_of(descriptor) + ".json")
    package.write_text(_package_json(name, fields, seed))
    return (metadata, package)


# --- real mode --------------------------------------------------------------------------------------


def _ntfs_label(name: str) -> str:
    label = "".join(char if char.isalnum() or char in " .-_" else "_" for char in name)
    return label[:32] or "AppVolume"


def _copy_in(flat: Path, payload: Sequence[_Payload], seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="corpus-") as scratch:
        for index, item in enumerate(payload):
            source = Path(scratch) / item.name
            source.write_bytes(item.data)
            mtime = _payload_mtime(seed, index)
            os.utime(source, (mtime, mtime))
            _run("ntfscp", "-f", "-q", "-t", flat, source, f"/{item.name}")


def _make_real(descriptor: Path, name: str, size_mib: int, payload: Sequence[_Payload], seed: int) -> Path:
    subformat = "subformat=monolithicFlat"
    _run("qemu-img", "create", "-q", "-f", "vmdk", "-o", subformat, descriptor, f"{size_mib}M")
    flat = extent_files(descriptor)[0]
    geometry = ("-s", "512", "-p", "0", "-H", "16", "-S", "63")  # fixed, so mkntfs asks nothing of the file
    _run("mkntfs", "-q", "-F", "-f", "-T", *geometry, "-L", _ntfs_label(name), flat)
    _copy_in(flat, payload, seed)
    return flat


def _list_ntfs(flat: Path) -> list[_NtfsFile]:
    output = _run("ntfsls", "-f", "-l", "-i", flat).stdout.decode(errors="replace")
    files = []
    for line in output.splitlines():
        match = _NTFSLS_RE.match(line)
        if match:
            files.append(_NtfsFile(int(match.group(1)), int(match.group(2)), match.group(3)))
    return files


def _is_ntfs(flat: Path) -> bool:
    with flat.open("rb") as handle:
        return handle.read(11)[3:11] == b"NTFS    "


# --- fallback mode ----------------------------------------------------------------------------------


def _make_fallback(descriptor: Path, name: str, size_mib: int, payload: Sequence[_Payload], seed: int) -> Path:
    """Fallback (no tools): a valid monolithicFlat pair whose flat file is NTFS-like, not NTFS."""
    rng = random.Random(f"fallback:{seed}")
    flat = descriptor.with_name(_base_of(descriptor) + "-flat.vmdk")
    size_bytes = size_mib * MIB
    descriptor.write_text(format_descriptor(flat.name, size_bytes, rng.getrandbits(32)))
    table_end = FALLBACK_TABLE_OFFSET + FALLBACK_RECORD_BYTES * (len(payload) + 8)
    offset = _align(max(MIB, table_end), MIB)
    with flat.open("wb") as handle:
        handle.truncate(size_bytes)
        boot = FALLBACK_MAGIC + _ntfs_label(name).encode() + b"\x00"
        handle.write(boot.ljust(SECTOR_BYTES - 2, b"\x00") + b"\x55\xaa")
        for index, item in enumerate(payload):
            entry = {"name": item.name, "offset": offset, "size": len(item.data)}
            record = b"FILE0" + json.dumps(entry).encode()
            handle.seek(FALLBACK_TABLE_OFFSET + index * FALLBACK_RECORD_BYTES)
            handle.write(record[:FALLBACK_RECORD_BYTES])
            handle.seek(offset)
            handle.write(item.data)
            offset = _align(offset + len(item.data) + rng.choice((0, 0, CLUSTER_BYTES, 16 * CLUSTER_BYTES)))
    return flat


def _align(value: int, unit: int = CLUSTER_BYTES) -> int:
    return (value + unit - 1) // unit * unit


def _modify_fallback(flat: Path, rng: random.Random, fraction: float) -> None:
    """Fallback update: rewrite a 256 KiB run inside a few distinct 1 MiB blocks (never block 0)."""
    blocks = flat.stat().st_size // MIB
    count = min(max(1, round(fraction * blocks)), blocks - 1)
    run_bytes = MIB // 4
    with flat.open("r+b") as handle:
        for block in sorted(rng.sample(range(1, blocks), count)):
            start = block * MIB + rng.randrange(0, MIB - run_bytes + 1, CLUSTER_BYTES)
            data = rng.randbytes(run_bytes) if rng.random() < 0.5 else _dll_like(rng, run_bytes)
            handle.seek(start)
            handle.write(data)


# --- updates ----------------------------------------------------------------------------------------


def _patch_region(rng: random.Random, data: bytes, size: int) -> bytes:
    size = min(size, len(data))
    start = rng.randrange(0, len(data) - size + 1, CLUSTER_BYTES) if len(data) > size else 0
    return data[:start] + _dll_like(rng, size) + data[start + size :]


def _modify_real(flat: Path, rng: random.Random, fraction: float, seed: int) -> None:
    """An AppStack update inside NTFS: patch big files, rewrite small ones, add some, empty one."""
    budget = max(64 * 1024, int(flat.stat().st_size * fraction))
    files = [item for item in _list_ntfs(flat) if item.size_bytes > 0]
    rng.shuffle(files)
    small = [item for item in files if item.size_bytes <= 16384]
    large = [item for item in files if item.size_bytes > 16384]
    updates: list[_Payload] = []
    patch_budget = budget * 2 // 5
    for item in large[:2]:
        data = _run("ntfscat", "-f", flat, f"/{item.name}").stdout
        region = min(_align(patch_budget // 2), item.size_bytes)
        updates.append(_Payload(item.name, _patch_region(rng, data, region)))
    for item in small[1:4]:
        updates.append(_Payload(item.name, _text_like(rng, item.size_bytes + rng.randint(0, 200), "cfg")))
    added = [
        _Payload(f"update{seed}_{index}.dll", _dll_like(rng, _align(max(CLUSTER_BYTES, budget // 2))))
        for index in range(1)
    ]
    added += [_Payload(f"update{seed}_{index}.manifest", _text_like(rng, 3000, "xml")) for index in range(2)]
    _copy_in(flat, updates + added, seed)
    if small:
        _run("ntfstruncate", "-f", flat, str(small[0].inode), "0")


def modify_volume(vol: VolumeFiles, *, seed: int, fraction: float = 0.05) -> None:
    """Change a volume in place, as an AppStack update does.

    Real NTFS: about ``fraction`` of the volume's size is written: regions of two large files are
    patched, a few small files rewritten, new files added, and one small file emptied (ntfs-3g's
    tools cannot unlink). Fallback: a few 1 MiB blocks get a 256 KiB run rewritten. Either way the
    descriptor gets a new CID and the descriptor and flat file a newer mtime.
    """
    if not 0 < fraction < 1:
        raise CorpusInvalid(path=vol.descriptor, detail=f"fraction {fraction} is not between 0 and 1")
    rng = random.Random(f"modify:{seed}")
    before_ns = max(vol.flat.stat().st_mtime_ns, vol.descriptor.stat().st_mtime_ns)
    if _is_ntfs(vol.flat):
        _modify_real(vol.flat, rng, fraction, seed)
    else:
        _modify_fallback(vol.flat, rng, fraction)
    old_cid = read_cid(vol.descriptor)
    new_cid = rng.getrandbits(32)
    _write_cid(vol.descriptor, new_cid if new_cid != old_cid else new_cid ^ 1)
    _bump_mtime((vol.descriptor, vol.flat), before_ns)


def _bump_mtime(paths: Sequence[Path], before_ns: int) -> None:
    for path in paths:
        if path.stat().st_mtime_ns <= before_ns:
            stamp = before_ns + 1_000_000
            os.utime(path, ns=(stamp, stamp))


# --- public builders --------------------------------------------------------------------------------


def _check_request(descriptor: Path, relpath: str, size_mib: int, kind: str) -> None:
    if kind not in KINDS:
        raise CorpusInvalid(path=descriptor, detail=f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if not relpath.endswith(".vmdk") or relpath.endswith("-flat.vmdk"):
        raise CorpusInvalid(path=descriptor, detail="relpath must name a descriptor ending in .vmdk")
    if Path(relpath).is_absolute() or ".." in Path(relpath).parts:
        raise CorpusInvalid(path=descriptor, detail="relpath must stay inside the datastore")
    if size_mib < MIN_SIZE_MIB:
        raise CorpusInvalid(path=descriptor, detail=f"size_mib must be at least {MIN_SIZE_MIB}")
    if descriptor.exists():
        raise CorpusInvalid(path=descriptor, detail="the descriptor already exists")


def make_volume(
    root: Path,
    relpath: str,
    *,
    size_mib: int = 64,
    seed: int = 0,
    kind: str = "appstack",
    sidecars: bool = True,
    real: bool | None = None,
) -> VolumeFiles:
    """Create one volume at ``root / relpath``; ``root`` is a datastore directory named like the datastore.

    ``relpath`` names the descriptor, e.g. ``cloudvolumes/apps/Office!20!2016.vmdk`` (2.x) or
    ``appvolumes/packages/Chrome-v1.vmdk`` (4.x); the volume's display name is the unescaped base
    name. ``kind`` is ``appstack``, ``package`` or ``writable``. ``real=None`` uses the real tools when
    present (see the module docstring for real and fallback mode); ``real=True`` raises
    :class:`CorpusToolMissing` without them.
    """
    descriptor = root / relpath
    _check_request(descriptor, relpath, size_mib, kind)
    use_real = _use_real(real)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    name = unescape_name(_base_of(descriptor))
    payload = _plan_payload(kind, size_mib, seed)
    if use_real:
        flat = _make_real(descriptor, name, size_mib, payload, seed)
        _write_cid(descriptor, random.Random(f"cid:{seed}").getrandbits(32))
    else:
        flat = _make_fallback(descriptor, name, size_mib, payload, seed)
    written: tuple[Path, ...] = ()
    if sidecars:
        flavour = _flavour_of(relpath, kind)
        written = _write_sidecars(descriptor, name, kind, flavour, root.name, size_mib, seed)
    return VolumeFiles(descriptor=descriptor, extents=(flat,), sidecars=written)


def _copy_sparse(source: Path, target: Path) -> None:
    """Copy a flat file, leaving all-zero 1 MiB blocks as holes."""
    with source.open("rb") as reader, target.open("wb") as writer:
        while block := reader.read(MIB):
            if block.count(0) == len(block):
                writer.seek(len(block), os.SEEK_CUR)
            else:
                writer.write(block)
        writer.truncate(source.stat().st_size)


def _rename_sidecar(source: Path, target: Path, name: str, seed: int) -> None:
    rng = random.Random(f"clone:{name}:{seed}")
    guid = _guid(rng)
    text = source.read_text()
    if source.suffix == ".json":
        document = json.loads(text)
        document["package"].update(name=name, guid=guid, version=f"{rng.randint(2, 9)}.0")
        target.write_text(json.dumps(document, indent=2) + "\n")
        return
    text = re.sub(r"^:name: .*$", f":name: {_yaml_scalar(name)}", text, flags=re.MULTILINE)
    text = re.sub(r"^:volume_guid: .*$", f":volume_guid: {_yaml_scalar(guid)}", text, flags=re.MULTILINE)
    target.write_text(text)


def clone_update(root: Path, src: VolumeFiles, new_relpath: str, *, seed: int) -> VolumeFiles:
    """A 2.x-style update: copy ``src`` to ``root / new_relpath``, then :func:`modify_volume` the copy.

    The copy's descriptor names its own flat file, its sidecars carry the new base name, display name
    and a new volume GUID; ``src`` is left untouched.
    """
    descriptor = root / new_relpath
    if descriptor.exists() or not new_relpath.endswith(".vmdk"):
        raise CorpusInvalid(path=descriptor, detail="the target exists or is not a .vmdk descriptor")
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    base = _base_of(descriptor)
    flat = descriptor.with_name(base + "-flat.vmdk")
    _copy_sparse(src.flat, flat)
    descriptor.write_text(_rename_extent(src.descriptor.read_text(), src.flat.name, flat.name))
    name = unescape_name(base)
    sidecars = []
    old_base = _base_of(src.descriptor)
    for sidecar in src.sidecars:
        target = descriptor.with_name(base + sidecar.name.removeprefix(old_base))
        _rename_sidecar(sidecar, target, name, seed)
        sidecars.append(target)
    clone = VolumeFiles(descriptor=descriptor, extents=(flat,), sidecars=tuple(sidecars))
    modify_volume(clone, seed=seed)
    return clone


def _datastore_plan(flavour: str, count: int) -> list[tuple[str, str]]:
    """(relpath, kind) for ``count`` app volumes and one writable."""
    plan = []
    for index in range(count):
        name = _APP_NAMES[index % len(_APP_NAMES)]
        if index >= len(_APP_NAMES):
            name = f"{name} {index // len(_APP_NAMES) + 1}"
        if flavour == "2.x":
            folder = "cloudvolumes/apps/Team Apps" if index == 2 else "cloudvolumes/apps"
            plan.append((f"{folder}/{escape_name(name)}.vmdk", "appstack"))
        else:
            plan.append((f"appvolumes/packages/{escape_name(name)}.vmdk", "package"))
    writable_folder = "cloudvolumes/writable" if flavour == "2.x" else "appvolumes/writables"
    plan.append((f"{writable_folder}/{escape_name(WRITABLE_OWNER)}.vmdk", "writable"))
    return plan


def make_datastore(
    root: Path,
    *,
    flavour: str = "2.x",
    count: int = 3,
    size_mib: int = 32,
    seed: int = 0,
    real: bool | None = None,
) -> list[VolumeFiles]:
    """A small datastore at ``root``: ``count`` app volumes, then one writable (``count + 1`` volumes).

    2.x: AppStacks in ``cloudvolumes/apps`` (the third one in the admin-chosen sub-folder
    ``cloudvolumes/apps/Team Apps``, a path with a space) and ``cloudvolumes/writable/CORP!5C!jdoe.vmdk``.
    4.x: packages (with ``.json``) in ``appvolumes/packages`` and ``appvolumes/writables/CORP!5C!jdoe.vmdk``.
    File names escape spaces and other characters AVM-style (``Office!20!2016.vmdk``).
    """
    if flavour not in FLAVOURS:
        raise CorpusInvalid(path=root, detail=f"flavour {flavour!r} is not one of {', '.join(FLAVOURS)}")
    root.mkdir(parents=True, exist_ok=True)
    return [
        make_volume(root, relpath, size_mib=size_mib, seed=seed * 1000 + index, kind=kind, real=real)
        for index, (relpath, kind) in enumerate(_datastore_plan(flavour, count))
    ]
