"""Find App Volumes volumes on a datastore: descriptor + extents + sidecars."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from catalog.errors import Error
from toolkit.transports.base import FileInfo, Transport
from toolkit.vmdk import (
    DESCRIPTOR_MAX_BYTES,
    VSAN_SCHEME,
    decode_name,
    is_descriptor_name,
    parse_descriptor,
    sidecar_names,
    volume_kind,
)


@dataclass(frozen=True, slots=True)
class VolumeFile:
    info: FileInfo
    role: str  # descriptor | extent | metadata | json


@dataclass(slots=True)
class FoundVolume:
    datastore: str
    path: str  # descriptor path relative to the datastore root
    name: str
    kind: str
    files: list[VolumeFile] = field(default_factory=list)
    error: str | None = None
    objects: list[str] = field(default_factory=list)  # extents that are vSAN objects (vsan://…), not files

    @property
    def key(self) -> str:
        return f"{self.datastore}/{self.path}"


def find_volumes(datastore: str, transport: Transport, listing: Iterable[FileInfo] | None = None) -> list[FoundVolume]:
    """Every volume below the datastore root, in path order; broken ones carry ``error``."""
    files = {f.path: f for f in (listing if listing is not None else transport.walk())}
    volumes = []
    for path in sorted(files):
        name = PurePosixPath(path).name
        if not is_descriptor_name(name):
            continue
        info = files[path]
        vol = FoundVolume(datastore, path, decode_name(name), volume_kind(path), [VolumeFile(info, "descriptor")])
        volumes.append(vol)
        try:
            head = transport.read_small(path, DESCRIPTOR_MAX_BYTES)
            desc = parse_descriptor(path, head)
        except Error as exc:
            vol.error = str(exc)
            continue
        except OSError as exc:
            vol.error = f"cannot read {path}: {exc.strerror or exc}"
            continue
        parent = PurePosixPath(path).parent
        if desc is not None:
            for ext in desc.extents:
                if ext.filename is None:
                    continue
                if ext.filename.lower().startswith(VSAN_SCHEME):  # no file to read: only a staged copy can
                    vol.objects.append(ext.filename)
                    continue
                ext_path = (parent / ext.filename).as_posix() if str(parent) != "." else ext.filename
                ext_info = files.get(ext_path)
                if ext_info is None:
                    vol.error = f"extent {ext.filename!r} named by {path} is missing"
                    break
                if ext.kind in ("FLAT", "VMFS") and ext_info.size < (ext.offset + ext.sectors) * 512:
                    vol.error = f"extent {ext.filename!r} is shorter than the descriptor says"
                    break
                vol.files.append(VolumeFile(ext_info, "extent"))
        for side, role in zip(sidecar_names(name), ("metadata", "json"), strict=True):
            side_path = (parent / side).as_posix() if str(parent) != "." else side
            if side_path in files:
                vol.files.append(VolumeFile(files[side_path], role))
    return volumes
