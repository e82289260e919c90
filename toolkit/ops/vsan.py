"""vSAN: volumes whose data are objects, read and written through a copy on a staging datastore.

A vSAN namespace folder holds only the descriptor of a disk (its extent line names
``vsan://<uuid>``) and plain files such as the App Volumes sidecars; neither SSH nor
datastore HTTP reaches the object, and a file uploaded into the namespace is not a
usable disk. ``VirtualDiskManager.CopyVirtualDisk_Task`` is the way in and out, so
both directions go through a VMFS or NFS datastore of the site, the *staging*
datastore, which the toolkit reads and writes with its ordinary transport.

Every copy asks for a thin destination (``destSpec`` diskType "thin", the adapter
type of the source's descriptor). Made by vCenter it comes out thick all the same
(vCenter refuses a ``destSpec``; see :mod:`toolkit.vsphere`): the staged copy takes
the disk's full provisioned size, which is checked to be free first, and the run
says so once. Made by a *copy host*, an ESXi host of the vSAN cluster that the
toolkit logs into directly (``copy_host`` in the configuration), it is thin: it
takes only the blocks the disk holds, and no provisioned-size check is made (a copy
that does not fit fails on the host and the volume fails). The copy host must mount
the vSAN and the staging datastore (:func:`check_copy_host`); vCenter still does
everything else (folders, deletes, listings).

- Snapshot (:class:`VsanStager`): copy ``[vsan] path/x.vmdk`` to
  ``[staging] .toolkit-staging/<run>/<n>/x.vmdk`` (descriptor plus ``x-flat.vmdk``),
  read the staged files as any other volume (same ingest path, same host hashing),
  and always delete the staged copy, on failure and interrupt too. The version is
  recorded under the volume's own paths, as a descriptor with a flat extent, so it
  restores anywhere; the snapshot notes ``captured_via: staging:<datastore>``. A
  volume whose vSAN descriptor kept its size and time is recorded unchanged without
  a copy.
- Restore (:class:`VsanDestination`): write the descriptor and flat extent to the
  staging datastore and check the digest that landed there, move the sidecars into
  the namespace folder, then ``CopyVirtualDisk_Task`` the staged disk into its
  vSAN folder (on the copy host, when there is one) and delete the staged copy.
  Only a volume that went all the way is reported restored, which is what lets
  ``--register`` import it.
- Adapter type: a copy's descriptor gets the adapterType of its ``VirtualDiskSpec``,
  which names only ide, busLogic or lsiLogic (pvscsi and lsisas1068 are asked for as
  lsiLogic), and a copy without a spec gets what the server decides. After the copy
  into vSAN, when the copy's ``ddb.adapterType`` is not the captured one, that one
  line of its descriptor (a small file in the namespace folder) is put back: read
  there, edited (every other byte kept), written to the staging folder and checked,
  moved over the copy's descriptor as the sidecars are moved, and read back. When
  that cannot be done the copy stays (it is a valid disk) and the volume carries a
  warning naming the disk and what its descriptor says. A disk found in place whose
  adapter type differs is left alone, with such a warning. A snapshot's staged copy
  gets the vSAN descriptor's line back the same way (on the staging datastore, before
  it is read), so what is recorded is the disk as it is on vSAN.

Staged copies live in ``.toolkit-staging/<host>-<pid>-<random>/`` on the staging
datastore (a dot folder: no listing and no snapshot of that datastore sees it). A
run that is killed leaves its folder behind; the next run that stages on that
datastore deletes folders whose process is gone (same host) or that are older than
:data:`STALE_AFTER_S` (another host), and never another live run's folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import posixpath
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol

from catalog.assemble import load_manifest, restore_file
from catalog.errors import Error
from catalog.index import FileRow
from catalog.repo import Repository
from toolkit.errors import DestinationExists
from toolkit.layout import FoundVolume, VolumeFile
from toolkit.ops.restore import (
    INFLIGHT_PER_STREAM,
    DestinationInUse,
    PlannedVolume,
    RestoredDigestMismatch,
    landed_digest,
    read_stored,
)
from toolkit.ops.snapshot import Source
from toolkit.progress import human_bytes
from toolkit.transports.base import FileInfo, ReadAt, Transport, WriteAt
from toolkit.transports.local import safe_relpath
from toolkit.vmdk import DESCRIPTOR_MAX_BYTES, NotADescriptor, parse_descriptor
from toolkit.vsphere import (
    DEFAULT_ADAPTER_TYPE,
    DatastoreFileNotFound,
    DatastoreInfo,
    StagingClient,
    format_datastore_path,
)

log = logging.getLogger(__name__)

STAGING_FOLDER: Final = ".toolkit-staging"  # on the staging datastore; a dot folder, so listings skip it
STALE_AFTER_S: Final = 26 * 3600.0  # another host's run this old is dead: the snapshot unit stops at 22 h
SECTOR_BYTES: Final = 512  # descriptor extents count 512-byte sectors
DISK_ROLES: Final = frozenset({"descriptor", "extent"})  # what CopyVirtualDisk carries; sidecars are plain files
_RUN_NAME = re.compile(r"^(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})$")
# A descriptor's ddb.adapterType line: "line" spans it without its ending (LF or CRLF), "value" is what follows "=".
_ADAPTER_LINE = re.compile(rb"^(?P<line>[ \t]*ddb\.adapterType[ \t]*=(?P<value>[^\r\n]*?))\r?$", re.MULTILINE)
EDITED_SUFFIX: Final = ".descriptor-edit"  # a descriptor's new text on the staging datastore: not a .vmdk, so no disk
# A descriptor's ddb.adapterType → the VirtualDiskSpec adapterType (the API knows ide, busLogic and lsiLogic;
# the other SCSI controllers are closest to lsiLogic).
ADAPTER_TYPE_OF: Final = {
    "ide": "ide",
    "buslogic": "busLogic",
    "lsilogic": "lsiLogic",
    "lsisas1068": "lsiLogic",
    "pvscsi": "lsiLogic",
}
THICK_COPIES: Final = (  # said once per run when vCenter makes the staging copies
    "vSAN disks are copied to the staging datastore through vCenter, which makes the copies thick "
    "(each takes the disk's full provisioned size there); for thin copies configure a copy host, "
    "an ESXi host of the vSAN cluster (copy_host, see docs/configuration.md)"
)

Read = Callable[[FoundVolume, Source], list[dict[str, Any]]]
Event = Callable[[str, dict[str, Any]], None]


# -- errors -----------------------------------------------------------------------------------------


class VsanNoStaging(Error):
    template = "{datastore} is a vSAN datastore and has no staging datastore configured"
    hint = 'add staging = "DATASTORE" (a VMFS or NFS datastore of the site) to its configuration'
    code = "vsan_no_staging"


class StagingUnavailable(Error):
    template = "staging datastore {datastore} cannot be used: {detail}"
    hint = "check that vCenter lists the datastore by that name and that it is accessible, or name another"
    code = "vsan_staging_unavailable"
    exit_code = 1


class StagingFull(Error):
    template = "staging datastore {datastore} has {free} free; {what} needs {need}"
    hint = (
        "a staging copy through vCenter is thick (the disk's full size): free space there, "
        "name a larger staging datastore, or configure a copy host (copy_host) for thin copies"
    )
    code = "vsan_staging_full"
    exit_code = 1


class CopyHostUnsuitable(Error):
    template = "copy host {url} cannot copy between {vsan} and {staging}: {detail}"
    hint = "name an ESXi host of the vSAN cluster that also mounts the staging datastore (copy_host url)"
    code = "vsan_copy_host_unsuitable"
    exit_code = 1


class VsanFull(Error):
    template = "vSAN datastore {datastore} has {free} free; {what} needs at least {need}"
    hint = "free space on the vSAN datastore (its storage policy may need a multiple of the disk's size)"
    code = "vsan_datastore_full"
    exit_code = 1


class StagedCopyInvalid(Error):
    template = "the staged copy {path} is not a disk with one flat extent: {detail}"
    hint = "the copy wrote an unexpected descriptor; report it with the descriptor's text"
    code = "vsan_staged_copy_invalid"
    exit_code = 1


class VsanVolumeInvalid(Error):
    template = "{path} cannot be restored onto vSAN: {detail}"
    hint = "restore it to a VMFS or NFS datastore or a directory instead"
    code = "vsan_volume_invalid"
    exit_code = 1


# -- what this module asks of vCenter -------------------------------------------------------------


class DiskCopier(Protocol):
    """A session on an ESXi host (a :class:`toolkit.vsphere.PyvmomiClient`): its copies are thin."""

    @property
    def url(self) -> str: ...

    def datastores(self) -> list[DatastoreInfo]: ...

    def copy_virtual_disk(self, source: str, dest: str, *, adapter_type: str = DEFAULT_ADAPTER_TYPE) -> None: ...


def check_copy_host(host: DiskCopier, vsan_datastore: str, staging: str | None) -> None:
    """Refuse a copy host that does not mount both datastores, accessible, under the names vCenter uses.

    ``staging`` None (none configured): only the vSAN datastore is checked.
    """
    seen = {d.name: d for d in host.datastores()}

    def unsuitable(detail: str) -> CopyHostUnsuitable:
        return CopyHostUnsuitable(url=host.url, vsan=vsan_datastore, staging=staging or "(none)", detail=detail)

    for name in (vsan_datastore, staging) if staging is not None else (vsan_datastore,):
        info = seen.get(name)
        if info is None:
            raise unsuitable(f"it does not mount {name} (it mounts: {', '.join(sorted(seen)) or 'none'})")
        if not info.accessible:
            raise unsuitable(f"it reports {name} inaccessible")
    if not seen[vsan_datastore].is_vsan:
        raise unsuitable(f"it reports {vsan_datastore} as {seen[vsan_datastore].type or 'unknown'}, not vSAN")
    if staging is not None and seen[staging].is_vsan:
        raise unsuitable(f"it reports {staging} as vSAN; stage on a VMFS or NFS datastore")


# -- pure helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdapterLine:
    """One ``ddb.adapterType`` line of a descriptor: where it is (without its line ending) and its value."""

    start: int
    end: int
    value: str  # as written, quotes and surrounding blanks removed


def adapter_lines(descriptor: bytes) -> list[AdapterLine]:
    """The ``ddb.adapterType`` lines of a descriptor, in order (one in a well-formed descriptor)."""
    return [
        AdapterLine(m.start("line"), m.end("line"), m["value"].decode("utf-8", "replace").strip().strip('"').strip())
        for m in _ADAPTER_LINE.finditer(descriptor)
    ]


def adapter_type_of(descriptor: bytes) -> str:
    """The adapterType a copy of the disk with this descriptor asks for: its ddb.adapterType, mapped."""
    lines = adapter_lines(descriptor)
    return ADAPTER_TYPE_OF.get(lines[0].value.lower(), DEFAULT_ADAPTER_TYPE) if lines else DEFAULT_ADAPTER_TYPE


def with_adapter_line(descriptor: bytes, captured: bytes) -> bytes | None:
    """``descriptor`` with its one ``ddb.adapterType`` line replaced by the first one of ``captured``.

    Every other byte is kept: the other lines, their order and the line ending of the replaced line.
    None when ``captured`` has no such line or ``descriptor`` has not exactly one.
    """
    want, now = adapter_lines(captured), adapter_lines(descriptor)
    if not want or len(now) != 1:
        return None
    return descriptor[: now[0].start] + captured[want[0].start : want[0].end] + descriptor[now[0].end :]


def describe_adapter(descriptor: bytes) -> str:
    """What a descriptor says about its adapter type, for messages."""
    lines = adapter_lines(descriptor)
    if not lines:
        return "names no adapter type (no ddb.adapterType line)"
    if len(lines) > 1:
        return f"has {len(lines)} ddb.adapterType lines ({', '.join(repr(x.value) for x in lines)})"
    return f'says ddb.adapterType = "{lines[0].value}"'


def host_tag(host: str) -> str:
    """A host name as it appears in run folder names (letters and digits only)."""
    return re.sub(r"[^A-Za-z0-9]", "", host)[:40] or "host"


def run_name(host: str, pid: int, rand: str) -> str:
    """The folder of one run below ``.toolkit-staging``: whose it is, so a later run can tell if it is over."""
    return f"{host_tag(host)}-{pid}-{rand}"


def is_stale(name: str, newest_mtime_s: float, *, host: str, now_s: float, alive: Callable[[int], bool]) -> bool:
    """True when the run folder ``name`` belongs to a run that is over.

    Same host: its process is gone, or it is older than :data:`STALE_AFTER_S` (a reused pid).
    Another host: it is older than that. Names this module does not write are left alone.
    """
    match = _RUN_NAME.match(name)
    if match is None:
        return False
    old = now_s - newest_mtime_s > STALE_AFTER_S
    if match["host"] == host_tag(host):
        return old or not alive(int(match["pid"]))
    return old


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def sibling(path: str, name: str) -> str:
    """``name`` in the folder of ``path``."""
    folder = posixpath.dirname(path)
    return f"{folder}/{name}" if folder else name


# -- the staging area -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StagedDisk:
    """A disk copied onto the staging datastore: paths relative to that datastore's root."""

    descriptor: str
    extent: str  # the flat extent the staged descriptor names
    descriptor_size: int
    extent_size: int


class StagingArea:
    """Folders on the staging datastore for this process's copies, and the sweep of dead runs' folders.

    ``copy_host``, when given, makes the disk copies (thin); else vCenter (``client``) does (thick).
    """

    def __init__(
        self,
        client: StagingClient,
        datastore: str,
        transport: Transport,
        *,
        copy_host: DiskCopier | None = None,
        host: str | None = None,
        now: Callable[[], float] = time.time,
        alive: Callable[[int], bool] = process_alive,
    ) -> None:
        self.client = client
        self.datastore = datastore
        self.transport = transport
        self.copy_host = copy_host
        self._told_thick = False
        self.host = host or socket.gethostname()
        self.run = f"{STAGING_FOLDER}/{run_name(self.host, os.getpid(), secrets.token_hex(4))}"
        self._now = now
        self._alive = alive
        self._lock = threading.Lock()
        self._swept = False
        self._made = False
        self._counter = itertools.count(1)
        self.warnings: list[str] = []

    def where(self, path: str) -> str:
        return format_datastore_path(self.datastore, path)

    def info(self) -> DatastoreInfo:
        found = {d.name: d for d in self.client.datastores()}
        info = found.get(self.datastore)
        if info is None:
            raise StagingUnavailable(datastore=self.datastore, detail="vCenter does not list it")
        if not info.accessible:
            raise StagingUnavailable(datastore=self.datastore, detail="vCenter reports it inaccessible")
        if info.is_vsan:
            raise StagingUnavailable(datastore=self.datastore, detail="it is vSAN itself; name a VMFS or NFS one")
        return info

    @property
    def thin(self) -> bool:
        """True when the disk copies are thin (a copy host makes them)."""
        return self.copy_host is not None

    def copy_need(self, size: int) -> int:
        """The free space to ask of the staging datastore before copying a disk of ``size`` bytes there.

        A thick copy takes the full size. A thin one takes what the disk holds, which is not known
        before the copy: only the descriptor's room is asked, and a copy that does not fit fails on the host.
        """
        return DESCRIPTOR_MAX_BYTES if self.thin else size + DESCRIPTOR_MAX_BYTES

    def copy_disk(self, source: str, dest: str, adapter_type: str, emit: Event) -> None:
        """Copy the disk ``source`` to ``dest`` (datastore paths): on the copy host when there is one."""
        if self.copy_host is not None:
            emit("message", {"text": f"copying {source} to {dest} (thin, on ESXi host {self.copy_host.url})"})
            self.copy_host.copy_virtual_disk(source, dest, adapter_type=adapter_type)
            return
        emit("message", {"text": f"copying {source} to {dest} (vCenter CopyVirtualDisk)"})
        self.client.copy_virtual_disk(source, dest, adapter_type=adapter_type)

    def require_space(self, need: int, what: str) -> None:
        info = self.info()
        if info.free_bytes < need:
            raise StagingFull(
                datastore=self.datastore, free=human_bytes(info.free_bytes), what=what, need=human_bytes(need)
            )

    def sweep(self) -> list[str]:
        """Delete the folders dead runs left in ``.toolkit-staging`` (once per area); the folders removed."""
        with self._lock:
            if self._swept:
                return []
            self._swept = True
        try:
            files = self.client.browse(self.datastore, STAGING_FOLDER)
        except DatastoreFileNotFound:
            return []
        newest: dict[str, float] = {}
        for f in files:
            parts = f.path.split("/")
            if len(parts) >= 3:
                newest[parts[1]] = max(newest.get(parts[1], 0.0), f.mtime_ns / 1e9)
        removed = []
        mine = self.run.rsplit("/", 1)[1]
        for name, mtime_s in sorted(newest.items()):
            if name == mine or not is_stale(name, mtime_s, host=self.host, now_s=self._now(), alive=self._alive):
                continue
            folder = f"{STAGING_FOLDER}/{name}"
            try:
                self.client.delete_file(self.where(folder), missing_ok=True)
            except Error as exc:
                self.warnings.append(f"a leftover staging folder {self.where(folder)} could not be deleted: {exc}")
                continue
            log.warning("deleted %s, left behind by a run that is over", self.where(folder))
            removed.append(folder)
        return removed

    @contextlib.contextmanager
    def folder(self) -> Iterator[str]:
        """A new, empty folder for one volume; deleted with everything in it when the block ends."""
        self.sweep()
        folder = f"{self.run}/{next(self._counter)}"
        self._made = True
        self.client.make_directory(self.where(folder))
        try:
            yield folder
        finally:
            self.remove(folder)

    def remove(self, folder: str) -> None:
        """Delete a volume's folder: staged disks through the disk manager, then the folder itself."""
        try:
            for f in self.client.browse(self.datastore, folder, "*.vmdk"):
                if f.path.endswith(".vmdk") and not f.path.endswith("-flat.vmdk"):
                    with contextlib.suppress(Error):  # not a disk (a partial upload): the folder delete takes it
                        self.client.delete_virtual_disk(self.where(f.path), missing_ok=True)
            self.client.delete_file(self.where(folder), missing_ok=True)
        except Error as exc:
            self.warnings.append(
                f"staged copy {self.where(folder)} could not be deleted ({exc}); the next run deletes it"
            )
            log.warning("%s", self.warnings[-1])

    def close(self) -> None:
        """Delete this run's folder (empty by now unless a deletion failed); the next run's sweep retries."""
        if self._made:
            with contextlib.suppress(Error):
                self.client.delete_file(self.where(self.run), missing_ok=True)

    def stage(self, vsan_datastore: str, path: str, folder: str, emit: Event, *, source: bytes) -> StagedDisk:
        """Copy the disk ``[vsan_datastore] path`` (whose descriptor is ``source``) into ``folder``; check the copy.

        The copy's descriptor gets the ``ddb.adapterType`` line of ``source`` again when the copy changed
        it (a copy spec names only ide, busLogic or lsiLogic), so a snapshot records the disk as it is.
        """
        name = posixpath.basename(path)
        staged = f"{folder}/{name}"
        if not self.thin:
            with self._lock:
                tell, self._told_thick = not self._told_thick, True
            if tell:
                emit("message", {"text": THICK_COPIES})
        self.copy_disk(format_datastore_path(vsan_datastore, path), self.where(staged), adapter_type_of(source), emit)
        head = self._keep_adapter_line(staged, self.transport.read_small(staged, DESCRIPTOR_MAX_BYTES), source)
        try:
            desc = parse_descriptor(staged, head)
        except NotADescriptor as exc:
            raise StagedCopyInvalid(path=self.where(staged), detail=str(exc)) from None
        names = [e.filename for e in desc.extents if e.filename] if desc is not None else []
        if desc is None or len(names) != 1 or "/" in names[0] or "://" in names[0]:
            raise StagedCopyInvalid(path=self.where(staged), detail="expected one extent file beside it")
        extent = sibling(staged, names[0])
        info = self.transport.stat(extent)
        if info is None or info.size < desc.sectors * SECTOR_BYTES:
            raise StagedCopyInvalid(path=self.where(staged), detail=f"its extent {extent} is missing or short")
        return StagedDisk(staged, extent, len(head), info.size)

    def _keep_adapter_line(self, staged: str, head: bytes, source: bytes) -> bytes:
        """The staged descriptor, its ``ddb.adapterType`` line rewritten to the one of ``source`` if they differ."""
        want, now = adapter_lines(source), adapter_lines(head)
        if not want or (len(now) == 1 and now[0].value == want[0].value):
            return head
        fixed = with_adapter_line(head, source)
        if fixed is None:  # recorded as the copy made it: the disk's data is what matters, and it is intact
            log.warning("%s: the copy's descriptor %s; recorded as it is", self.where(staged), describe_adapter(head))
            return head
        with self.transport.open_write(staged, len(fixed), time.time_ns()) as write_at:
            write_at(0, fixed)
        back = self.transport.read_small(staged, DESCRIPTOR_MAX_BYTES)
        if back != fixed:
            raise StagedCopyInvalid(path=self.where(staged), detail="its descriptor read back is not what was written")
        return back


# -- snapshot: reading a vSAN volume through a staged copy ----------------------------------------


class _NeedsStaging(Exception):
    """Raised by a :class:`StagedView` without a staged copy when a disk file must be read after all."""


class StagedView:
    """A read-only transport over one volume: its disk files from the staged copy, the rest from the namespace.

    ``routes`` maps the volume's own paths (descriptor, flat extent) to the staged copy's paths. Their
    size is the staged file's; their time is the vSAN descriptor's as it is now, so a disk written
    while it was read shows as changed. With ``routes`` None nothing is staged yet: reading a disk file
    raises :class:`_NeedsStaging`, which tells :class:`VsanStager` to make the copy.
    """

    def __init__(
        self,
        namespace: Transport,
        staging: Transport,
        descriptor: str,
        routes: Mapping[str, str] | None,
        sizes: Mapping[str, int],
    ) -> None:
        self.namespace = namespace
        self.staging = staging
        self.descriptor = descriptor
        self.routes = routes
        self.sizes = sizes
        self.data_ranges: Callable[[str], list[tuple[int, int]]] | None = None
        self.open_hashed: Callable[..., contextlib.AbstractContextManager[Any]] | None = None
        if getattr(staging, "data_ranges", None) is not None:
            self.data_ranges = self._data_ranges
        if getattr(staging, "open_hashed", None) is not None:
            self.open_hashed = self._open_hashed

    def _staged(self, path: str) -> str | None:
        if path not in self.sizes:
            return None
        if self.routes is None:
            raise _NeedsStaging(path)
        return self.routes[path]

    def describe(self) -> str:
        return f"{self.namespace.describe()} (disk read from a copy on {self.staging.describe()})"

    def walk(self) -> Iterator[FileInfo]:
        yield from self.namespace.walk()

    def stat(self, path: str) -> FileInfo | None:
        if path not in self.sizes:
            return self.namespace.stat(path)
        now = self.namespace.stat(self.descriptor)
        if now is None:
            return None
        return FileInfo(path, self.sizes[path], now.mtime_ns)

    def read_small(self, path: str, limit: int) -> bytes:
        staged = self._staged(path)
        return self.namespace.read_small(path, limit) if staged is None else self.staging.read_small(staged, limit)

    def open_read(self, path: str) -> contextlib.AbstractContextManager[ReadAt]:
        staged = self._staged(path)
        return self.namespace.open_read(path) if staged is None else self.staging.open_read(staged)

    def _disk_path(self, path: str) -> str:
        """The staged path of a disk file; only disk files are read as extents."""
        staged = self._staged(path)
        if staged is None:
            raise VsanVolumeInvalid(path=path, detail="only the disk is read from the staged copy")
        return staged

    def _data_ranges(self, path: str) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = self.staging.data_ranges(self._disk_path(path))  # type: ignore[attr-defined]
        return ranges

    def _open_hashed(self, path: str, chunk_size: int) -> contextlib.AbstractContextManager[Any]:
        opened: contextlib.AbstractContextManager[Any] = self.staging.open_hashed(  # type: ignore[attr-defined]
            self._disk_path(path), chunk_size
        )
        return opened

    def open_write(self, path: str, size: int, mtime_ns: int) -> contextlib.AbstractContextManager[WriteAt]:
        raise VsanVolumeInvalid(path=path, detail="a staged view is read-only")

    def clean_partials(self, path: str) -> None:
        return None

    def remove(self, path: str) -> None:
        raise VsanVolumeInvalid(path=path, detail="a staged view is read-only")

    def remove_dir(self, path: str) -> bool:
        raise VsanVolumeInvalid(path=path, detail="a staged view is read-only")


class VsanStager:
    """Captures the volumes of one vSAN datastore through copies on its staging datastore (a snapshot ``Stager``)."""

    def __init__(self, client: StagingClient, vsan_datastore: str, area: StagingArea, *, host_hashing: bool) -> None:
        self.client = client
        self.vsan_datastore = vsan_datastore
        self.area = area
        self.host_hashing = host_hashing
        self.via = f"staging:{area.datastore}"
        self.warnings = area.warnings  # the same list: what the area could not clean up

    def capture(
        self,
        vol: FoundVolume,
        source: Source,
        read: Read,
        prev_files: Mapping[str, dict[str, Any]],
        emit: Event,
    ) -> list[dict[str, Any]]:
        """The file entries of ``vol``: unchanged ones from ``prev_files``, the disk read from a staged copy."""
        desc_file = next(vf for vf in vol.files if vf.role == "descriptor")
        raw = source.transport.read_small(vol.path, DESCRIPTOR_MAX_BYTES)
        desc = parse_descriptor(vol.path, raw)
        if desc is None:
            raise VsanVolumeInvalid(path=vol.path, detail="a vSAN descriptor is text")
        name = posixpath.basename(vol.path)
        extent = sibling(vol.path, f"{name[:-5] if name.lower().endswith('.vmdk') else name}-flat.vmdk")
        mtime = desc_file.info.mtime_ns
        rest = [vf for vf in vol.files if vf.role != "descriptor"]
        prev_desc, prev_ext = prev_files.get(vol.path), prev_files.get(extent)
        size = desc.sectors * SECTOR_BYTES
        if (
            prev_desc
            and prev_ext
            and prev_desc["mtime_ns"] == mtime == prev_ext["mtime_ns"]
            and prev_ext["size"] == size
        ):
            # The vSAN descriptor kept its size and time: the size and mtime rule decides, as for any file.
            sizes = {vol.path: int(prev_desc["size"]), extent: size}
            with contextlib.suppress(_NeedsStaging):
                return read(self._view(vol, sizes, mtime, rest), self._source(source, vol, sizes, None))
        self.area.require_space(self.area.copy_need(size), f"a copy of [{self.vsan_datastore}] {vol.path}")
        with self.area.folder() as folder:
            staged = self.area.stage(self.vsan_datastore, vol.path, folder, emit, source=raw)
            extent = sibling(vol.path, posixpath.basename(staged.extent))
            sizes = {vol.path: staged.descriptor_size, extent: staged.extent_size}
            routes = {vol.path: staged.descriptor, extent: staged.extent}
            return read(self._view(vol, sizes, mtime, rest), self._source(source, vol, sizes, routes))

    def _view(self, vol: FoundVolume, sizes: Mapping[str, int], mtime: int, rest: list[VolumeFile]) -> FoundVolume:
        disk = [
            VolumeFile(FileInfo(path, size, mtime), "descriptor" if path == vol.path else "extent")
            for path, size in sizes.items()
        ]
        return dataclasses.replace(vol, files=[*disk, *rest], objects=[])

    def _source(
        self, source: Source, vol: FoundVolume, sizes: Mapping[str, int], routes: Mapping[str, str] | None
    ) -> Source:
        view = StagedView(source.transport, self.area.transport, vol.path, routes, sizes)
        return dataclasses.replace(source, transport=view, host_hashing=self.host_hashing)


class BrokenStager:
    """Stands in for a :class:`VsanStager` that could not be set up: each vSAN volume fails with the reason."""

    def __init__(self, staging: str, error: Error) -> None:
        self.via = f"staging:{staging}"
        self.error = error
        self.warnings: list[str] = []

    def capture(
        self,
        vol: FoundVolume,
        source: Source,
        read: Read,
        prev_files: Mapping[str, dict[str, Any]],
        emit: Event,
    ) -> list[dict[str, Any]]:
        raise self.error


# -- restore: writing a volume onto vSAN ----------------------------------------------------------


class Landing(Protocol):
    """One file of a volume to write: where it goes, the digest that must land, and its stored source."""

    @property
    def source(self) -> FileRow: ...

    @property
    def path(self) -> str: ...

    @property
    def digest(self) -> str: ...

    @property
    def data(self) -> bytes | None: ...  # content rewritten in memory; None: streamed from the repository

    @property
    def size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file restored exactly as it was captured (a :class:`Landing`)."""

    source: FileRow
    path: str
    digest: str
    data: bytes | None = None

    @property
    def size(self) -> int:
        return self.source.size if self.data is None else len(self.data)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class VsanDestination:
    """Restores volumes onto a vSAN datastore: written and checked on the staging datastore, then copied in."""

    def __init__(self, client: StagingClient, vsan_datastore: str, namespace: Transport, area: StagingArea) -> None:
        self.client = client
        self.datastore = vsan_datastore
        self.namespace = namespace
        self.area = area
        self.via = f"staging:{area.datastore}"

    def where(self, path: str) -> str:
        return format_datastore_path(self.datastore, path)

    def restore_volume(
        self,
        repo: Repository,
        item: PlannedVolume,
        entry: dict[str, Any],
        landings: Callable[[], Sequence[Landing]] | None = None,
        *,
        pool: ThreadPoolExecutor,
        emit: Event,
        overwrite: bool = False,
        protected: Mapping[str, str] | None = None,
    ) -> int:
        """Restore one planned volume; sets ``entry["status"]`` (and ``error``); returns the bytes written.

        ``landings`` gives the files as they land (renamed, rewritten); by default each stored file
        at its own path.
        """
        entry["via"] = self.via
        try:
            files = landings() if landings is not None else [StoredFile(f, f.path, f.digest) for f in item.files]
            return self._restore(repo, item, entry, files, pool, emit, overwrite, protected or {})
        except Error as exc:
            entry["status"] = "failed"
            entry["error"] = str(exc)
        except OSError as exc:  # the staging datastore refused a write (disk full, permissions, I/O error)
            entry["status"] = "failed"
            entry["error"] = (
                f"writing to {self.area.transport.describe()} failed: {exc.strerror or exc or type(exc).__name__}"
            )
        return 0

    def _restore(
        self,
        repo: Repository,
        item: PlannedVolume,
        entry: dict[str, Any],
        files: Sequence[Landing],
        pool: ThreadPoolExecutor,
        emit: Event,
        overwrite: bool,
        protected: Mapping[str, str],
    ) -> int:
        for f in files:
            safe_relpath(f.path)
        target = str(entry.get("path") or item.version.path)
        disk = [f for f in files if f.source.role in DISK_ROLES]
        sidecars = [f for f in files if f.source.role not in DISK_ROLES]
        descriptors = [f for f in disk if f.source.role == "descriptor"]
        extents = [f for f in disk if f.source.role == "extent"]
        if len(descriptors) != 1 or descriptors[0].path != target or len(extents) != 1:
            raise VsanVolumeInvalid(path=target, detail="only a descriptor with one flat extent can be copied in")
        if posixpath.dirname(extents[0].path) != posixpath.dirname(target):
            raise VsanVolumeInvalid(path=target, detail="its extent is not in the descriptor's folder")
        present = [f.path for f in [*descriptors, *sidecars] if self.namespace.stat(f.path) is not None]
        if present:
            if target in protected:
                raise DestinationInUse(path=self.where(target), reason=protected[target])
            if self._in_place(repo, target, extents[0], sidecars, emit):
                note = self._in_place_adapter(repo, target, descriptors[0], pool)
                if note is not None:
                    entry.setdefault("warnings", []).append(note)
                entry["status"] = "in place"
                emit("bytes", {"n": sum(f.size for f in files)})
                return 0
            if not overwrite:
                raise DestinationExists(path=self.where(present[0]))
        need = sum(f.size for f in files)
        self.area.require_space(need, f"restoring {target} ({len(files)} files)")
        vsan = next((d for d in self.client.datastores() if d.name == self.datastore), None)
        if vsan is not None and vsan.free_bytes < extents[0].size:
            raise VsanFull(
                datastore=self.datastore,
                free=human_bytes(vsan.free_bytes),
                what=f"the disk of {target}",
                need=human_bytes(extents[0].size),
            )
        chunk_size = repo.config.chunk_size
        written = 0
        with self.area.folder() as folder:
            for f in files:
                staged = f"{folder}/{posixpath.basename(f.path)}"
                self._write(repo, f, staged, pool, emit)
                landed = landed_digest(self.area.transport, staged, f.size, chunk_size)
                if landed != f.digest:
                    raise RestoredDigestMismatch(path=self.area.where(staged), got=landed, expected=f.digest)
                written += f.size
            self.client.make_directory(self.where(posixpath.dirname(target)))
            for f in sidecars:  # plain files: moved into the namespace folder, then checked there
                staged = f"{folder}/{posixpath.basename(f.path)}"
                self.client.move_file(self.area.where(staged), self.where(f.path), overwrite=overwrite)
                landed = landed_digest(self.namespace, f.path, f.size, chunk_size)
                if landed != f.digest:
                    raise RestoredDigestMismatch(path=self.where(f.path), got=landed, expected=f.digest)
            staged = self.area.where(f"{folder}/{posixpath.basename(target)}")
            if target in present:
                emit("message", {"text": f"deleting {self.where(target)} to replace it (--overwrite)"})
                self.client.delete_virtual_disk(self.where(target), missing_ok=True)
            captured = self.area.transport.read_small(f"{folder}/{posixpath.basename(target)}", DESCRIPTOR_MAX_BYTES)
            self.area.copy_disk(staged, self.where(target), adapter_type_of(captured), emit)
            warning = self._put_back_adapter_line(target, captured, folder, emit)
        if self.namespace.stat(target) is None:
            raise VsanVolumeInvalid(path=self.where(target), detail="the copy was reported done, but it is not there")
        if warning is not None:
            entry.setdefault("warnings", []).append(warning)
        entry["status"] = "restored"
        return written

    def _read_descriptor(self, target: str) -> bytes:
        """The descriptor of the vSAN disk at ``target``, read from its namespace folder; refused when it is not one."""
        data = self.namespace.read_small(target, DESCRIPTOR_MAX_BYTES)
        if parse_descriptor(self.where(target), data) is None:  # 64 KiB or more, not text, no extent: raises
            raise NotADescriptor(path=self.where(target), detail="a sparse disk, not a text descriptor")
        return data

    def _put_back_adapter_line(self, target: str, captured: bytes, folder: str, emit: Event) -> str | None:
        """Give the copy at ``target`` the ``ddb.adapterType`` line of the ``captured`` descriptor again.

        A copy's adapterType is the one its VirtualDiskSpec could name (ide, busLogic or lsiLogic; a copy
        without a spec gets what the server decides), so a pvscsi or lsisas1068 disk comes out as another
        controller's. Its descriptor is a small file in the namespace folder: it is read, that one line
        replaced (every other byte kept), written to the staging folder, checked there, moved over the
        copy's descriptor like a sidecar, and read back. The copy is a valid disk whatever happens here:
        what fails is returned as a warning naming the disk and what its descriptor says.
        """
        want = adapter_lines(captured)
        if not want:
            return None  # the snapshot's descriptor names no adapter type: nothing to put back
        where = self.where(target)
        line = captured[want[0].start : want[0].end].decode("utf-8", "replace").strip()

        def warn(text: str) -> str:
            log.warning("%s: %s", where, text)
            return f"{where}: {text}"

        try:
            copied = self._read_descriptor(target)
        except (Error, OSError) as exc:
            return warn(
                f"the copy's descriptor could not be read to check that it keeps the captured {line} "
                f"({_reason(exc)}); the disk is usable, its adapter type may differ"
            )
        now = adapter_lines(copied)
        if len(now) == 1 and now[0].value == want[0].value:
            return None  # the copy kept it
        fixed = with_adapter_line(copied, captured)
        if fixed is None:
            return warn(
                f"the copy's descriptor {describe_adapter(copied)} instead of the captured {line}; "
                "it was left as it is (the disk is usable)"
            )
        edited = f"{folder}/{posixpath.basename(target)}{EDITED_SUFFIX}"
        failure: str | None = None
        try:
            with self.area.transport.open_write(edited, len(fixed), time.time_ns()) as write_at:
                write_at(0, fixed)
            if self.area.transport.read_small(edited, DESCRIPTOR_MAX_BYTES) == fixed:
                self.client.move_file(self.area.where(edited), where, overwrite=True)
            else:  # never moved over the copy's descriptor: what landed is not what was written
                failure = f"{self.area.where(edited)} read back is not what was written"
        except (Error, OSError) as exc:
            failure = _reason(exc)
        if failure is not None:
            says = self._adapter_now(target, fixed)
            if says is not None:
                return warn(
                    f"the copy's descriptor {says} instead of the captured {line}; putting that line back failed "
                    f"({failure}); the disk is usable"
                )
        else:
            try:
                back = self._read_descriptor(target)
            except (Error, OSError) as exc:
                return warn(
                    f"the captured {line} was written into the copy's descriptor, "
                    f"but reading it back failed ({_reason(exc)})"
                )
            if back != fixed:
                return warn(
                    f"the copy's descriptor {describe_adapter(back)} after the captured {line} was written into it "
                    "(what was read back is not what was written)"
                )
        said = f'ddb.adapterType = "{now[0].value}"'
        emit("message", {"text": f"{where}: the copy's descriptor said {said}; the captured {line} was put back"})
        return None

    def _adapter_now(self, target: str, fixed: bytes) -> str | None:
        """After a failed rewrite: None when the descriptor is ``fixed`` all the same, else what it says now."""
        try:
            now = self._read_descriptor(target)
        except (Error, OSError) as exc:
            return f"cannot be read ({_reason(exc)})"
        return None if now == fixed else describe_adapter(now)

    def _write(self, repo: Repository, f: Landing, staged: str, pool: ThreadPoolExecutor, emit: Event) -> None:
        self.area.transport.clean_partials(staged)
        with self.area.transport.open_write(staged, f.size, f.source.mtime_ns) as write_at:
            if f.data is not None:
                write_at(0, f.data)
                emit("bytes", {"n": f.size})
                return
            manifest = load_manifest(repo.index, repo.reader, f.source.manifest_id)
            restore_file(
                repo.index,
                repo.reader,
                manifest,
                write_at,
                pool=pool,
                progress=lambda n: emit("bytes", {"n": n}),
                digest=False,
                inflight=INFLIGHT_PER_STREAM,
            )

    def _in_place_adapter(
        self, repo: Repository, target: str, descriptor: Landing, pool: ThreadPoolExecutor
    ) -> str | None:
        """For a disk in place: a warning when its descriptor's ``ddb.adapterType`` is not the captured one.

        Nothing is written: the disk is left as it is, as for any volume in place.
        """
        if descriptor.size >= DESCRIPTOR_MAX_BYTES:
            return None
        captured = descriptor.data if descriptor.data is not None else read_stored(repo, descriptor.source, pool)
        want = adapter_lines(captured)
        if not want:
            return None
        try:
            live = self._read_descriptor(target)
        except (Error, OSError) as exc:
            return (
                f"{self.where(target)}: its descriptor could not be read to compare its adapter type ({_reason(exc)})"
            )
        now = adapter_lines(live)
        if len(now) == 1 and now[0].value == want[0].value:
            return None
        line = captured[want[0].start : want[0].end].decode("utf-8", "replace").strip()
        return (
            f"{self.where(target)}: the disk and its sidecars are as captured, but its descriptor "
            f"{describe_adapter(live)} instead of the captured {line}; it was left as it is"
        )

    def _in_place(
        self, repo: Repository, target: str, extent: Landing, sidecars: Sequence[Landing], emit: Event
    ) -> bool:
        """True when the vSAN disk at ``target`` and its sidecars hold what would be restored (read via a copy)."""
        chunk_size = repo.config.chunk_size
        for f in sidecars:
            now = self.namespace.stat(f.path)
            if (
                now is None
                or now.size != f.size
                or landed_digest(self.namespace, f.path, f.size, chunk_size) != f.digest
            ):
                return False
        if self.namespace.stat(target) is None:
            return False
        self.area.require_space(self.area.copy_need(extent.size), f"a copy of {self.where(target)} to compare")
        live = self.namespace.read_small(target, DESCRIPTOR_MAX_BYTES)
        with self.area.folder() as folder:
            staged = self.area.stage(self.datastore, target, folder, emit, source=live)
            if staged.extent_size != extent.size:
                return False
            return landed_digest(self.area.transport, staged.extent, extent.size, chunk_size) == extent.digest
