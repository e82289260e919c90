"""Restore drills: restore volumes to scratch space, check them as a hypervisor would, clean up, time it.

A drill restores into a local scratch directory by default. Given a destination (a configured
datastore, through its transport: a mounted directory, SFTP to an ESXi host, datastore HTTP),
each volume is restored there under a drill name, ``drill-<name>-<time>``, in a folder of its
own beside the volume's folder, so nothing live is touched; with a manager, the drilled copy is
also imported, checked in the manager's listing, and deleted from the manager again. Whatever
happens, the drilled copy is removed from the manager and from the destination afterwards.
"""

from __future__ import annotations

import posixpath
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from catalog.errors import Error
from catalog.index import VersionRow
from catalog.repo import Repository
from toolkit.avm import AvmVolume
from toolkit.ops.restore import NewName, plan_restore, restore
from toolkit.transports.base import ReadAt, Transport
from toolkit.transports.local import LocalTransport
from toolkit.vmdk import DESCRIPTOR_MAX_BYTES, parse_descriptor

QEMU_CHECK_TIMEOUT_S: Final = 600.0
NTFS_OEM: Final = b"NTFS    "
DRILL_FOLDER: Final = "toolkit-drill-"  # + time: beside the volume's folder, so the manager sees the same kind
IMPORT_TIMEOUT_S: Final = 300.0  # the manager's import and delete jobs for one drilled volume


class DrillManager(Protocol):
    """What a drill asks of App Volumes Manager (``toolkit.avm.AvmClient`` has it)."""

    def import_folder(self, datastore: str, path: str, datacenter: str = "") -> None: ...

    def wait_jobs(self, timeout_s: float = 300.0) -> None: ...

    def inventory(self) -> list[AvmVolume]: ...

    def delete_volume(self, volume: AvmVolume) -> str | None: ...


@dataclass(frozen=True, slots=True)
class DrillTarget:
    """Where a drill restores, and the manager (with its name for that datastore) to import into, if any."""

    transport: Transport
    manager: DrillManager | None = None
    datastore: str | None = None


@dataclass(slots=True)
class DrillResult:
    volume: str
    snapshot_id: str
    size: int
    seconds: float = 0.0
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    drilled_as: str | None = None  # the descriptor path of the drilled copy on the destination

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        gib = self.size / (1 << 30)
        return {
            "volume": self.volume,
            "snapshot": self.snapshot_id,
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "seconds_per_gib": round(self.seconds / gib, 2) if gib else None,
            "drilled_as": self.drilled_as,
            "checks": self.checks,
            "problems": self.problems,
            "notes": self.notes,
            "ok": self.ok,
        }


def file_system_signature(read_at: ReadAt) -> str | None:
    """'ntfs' when a flat extent holds NTFS (bare, or in the first MBR partition), else None."""
    boot = read_at(0, 512)
    if boot[3:11] == NTFS_OEM:
        return "ntfs"
    if len(boot) == 512 and boot[510:512] == b"\x55\xaa":
        for i in range(4):
            entry = boot[446 + 16 * i : 462 + 16 * i]
            if entry[4] in (0x07, 0x27):
                start = int.from_bytes(entry[8:12], "little") * 512
                if read_at(start, 11)[3:11] == NTFS_OEM:
                    return "ntfs"
    return None


def check_volume(dest: Transport, descriptor_path: str) -> tuple[list[str], list[str], list[str]]:
    """(checks passed, problems, notes) for a volume restored on ``dest``, read through the transport.

    ``qemu-img check`` needs the files on a local file system: it runs when ``dest`` is a local
    directory and is noted as not run otherwise.
    """
    checks: list[str] = []
    problems: list[str] = []
    notes: list[str] = []
    try:
        desc = parse_descriptor(descriptor_path, dest.read_small(descriptor_path, DESCRIPTOR_MAX_BYTES))
    except Error as exc:
        return checks, [str(exc)], notes
    if desc is None:
        checks.append("self-contained sparse VMDK")
        return checks, problems, notes
    checks.append(f"descriptor parses ({desc.create_type}, {len(desc.extents)} extent(s))")
    folder = posixpath.dirname(descriptor_path)
    for ext in desc.extents:
        if ext.filename is None:
            continue
        path = posixpath.join(folder, ext.filename) if folder else ext.filename
        info = dest.stat(path)
        if info is None:
            problems.append(f"extent {ext.filename} is missing")
            continue
        if ext.kind in ("FLAT", "VMFS"):
            need = (ext.offset + ext.sectors) * 512
            if info.size < need:
                problems.append(f"extent {ext.filename} has {info.size} bytes, {need} needed")
            else:
                checks.append(f"extent {ext.filename} matches {ext.sectors} sectors")
            with dest.open_read(path) as read_at:
                fs = file_system_signature(read_at)
            if fs:
                checks.append(f"{fs} file system signature")
    qemu = shutil.which("qemu-img")
    if not isinstance(dest, LocalTransport):
        notes.append(f"qemu-img check not run: {dest.describe()} is not a local directory")
    elif qemu:
        local = dest.root.joinpath(*descriptor_path.split("/"))
        proc = subprocess.run(
            [qemu, "check", str(local)], capture_output=True, text=True, timeout=QEMU_CHECK_TIMEOUT_S, check=False
        )
        # qemu-img check: 0 clean; 63 means "this format has no consistency checks" (flat), not a failure.
        if proc.returncode in (0, 63):
            checks.append("qemu-img check passes" if proc.returncode == 0 else "qemu-img opens it")
        else:
            problems.append(f"qemu-img check failed: {(proc.stdout + proc.stderr).strip()[:200]}")
    return checks, problems, notes


def choose(repo: Repository, when: str, sample: int | None, patterns: list[str]) -> list[str]:
    """Volume keys to drill: the ones drilled longest ago (never first), ``sample`` of them (None: all)."""
    plan, _ = plan_restore(repo, when, patterns)
    last: dict[str, str] = {}
    for run in reversed(repo.index.verify_runs(limit=10_000)):
        if run["level"] == "drill":
            for key in run["detail"].get("volumes", []):
                last[key] = run["started_at"]
    keys = sorted((p.version.volume_key for p in plan), key=lambda k: (last.get(k, ""), k))
    return keys if sample is None else keys[:sample]


def drill_name(stamp: str) -> Callable[[VersionRow], NewName]:
    """Where a drilled copy goes: ``<folder>/toolkit-drill-<stamp>/drill-<name>-<stamp>.vmdk``."""

    def place(v: VersionRow) -> NewName:
        folder = posixpath.dirname(v.path)
        return NewName(
            posixpath.join(folder, DRILL_FOLDER + stamp) if folder else DRILL_FOLDER + stamp, f"drill-{v.name}-{stamp}"
        )

    return place


def drill(
    repo: Repository,
    when: str,
    keys: list[str],
    *,
    scratch: Path | None = None,
    target: DrillTarget | None = None,
) -> list[DrillResult]:
    """Restore each volume, check it, and always remove it: into scratch space, or onto ``target``."""
    if target is not None:
        return [drill_onto(repo, when, key, target) for key in keys]
    results: list[DrillResult] = []
    base = Path(tempfile.mkdtemp(prefix="toolkit-drill-", dir=scratch))
    try:
        for key in keys:
            where = LocalTransport(base / f"v{len(results)}")
            started = time.monotonic()
            report = restore(repo, when, where, patterns=[key])
            entry = next(v for v in report.volumes if v["key"] == key)
            res = DrillResult(key, entry.get("snapshot", ""), int(entry.get("size", 0)))
            if entry["status"] != "restored":
                res.problems.append(f"restore {entry['status']}: {entry.get('error') or entry.get('reason')}")
            else:
                res.checks.append("restored with the recorded digest")
                checks, problems, notes = check_volume(where, entry["path"])
                res.checks += checks
                res.problems += problems
                res.notes += notes
            res.seconds = time.monotonic() - started
            shutil.rmtree(where.root, ignore_errors=True)
            results.append(res)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


def drill_onto(repo: Repository, when: str, key: str, target: DrillTarget) -> DrillResult:
    """One volume drilled on a destination under a drill name; imported into the manager when there is one."""
    dest = target.transport
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    started = time.monotonic()
    entry: dict[str, Any] = {}
    res = DrillResult(key, "", 0)
    imported: list[str] = []  # descriptor paths the manager was asked to import
    try:
        report = restore(repo, when, dest, patterns=[key], rename=drill_name(stamp))
        entry = next(v for v in report.volumes if v["key"] == key)
        res.snapshot_id, res.size, res.drilled_as = entry.get("snapshot", ""), int(entry.get("size", 0)), entry["path"]
        if entry["status"] != "restored":
            res.problems.append(f"restore {entry['status']}: {entry.get('error') or entry.get('reason')}")
        else:
            res.checks.append(f"restored on {dest.describe()} as {entry['path']}, each file with its digest")
            checks, problems, notes = check_volume(dest, entry["path"])
            res.checks += checks
            res.problems += problems
            res.notes += notes
            if target.manager is not None and target.datastore is not None:
                imported.append(entry["path"])
                import_drilled(target.manager, target.datastore, entry, res)
    except Error as exc:
        res.problems.append(str(exc))
    except OSError as exc:  # the destination failed under the checks
        res.problems.append(f"reading {dest.describe()} failed: {exc.strerror or exc}")
    finally:
        res.seconds = time.monotonic() - started  # restore, checks and import: the time to recover it
        if imported and target.manager is not None and target.datastore is not None:
            forget_drilled(target.manager, target.datastore, entry, res)
        if entry:
            remove_drilled(dest, entry, res)
    return res


def import_drilled(manager: DrillManager, datastore: str, entry: dict[str, Any], res: DrillResult) -> None:
    """Import the drilled copy's folder and check the manager lists it as the volume the sidecars describe."""
    manager.import_folder(datastore, posixpath.dirname(entry["path"]))
    manager.wait_jobs(IMPORT_TIMEOUT_S)
    found = next((v for v in manager.inventory() if v.datastore == datastore and v.relpath == entry["path"]), None)
    if found is None:
        res.problems.append("the manager does not list the drilled copy after the import")
        return
    res.checks.append(f"imported into the manager as {found.name!r} (id {found.id}, {found.status})")
    guid = str(entry.get("guid") or "")
    if guid and found.guid.strip("{}").lower() != guid.strip("{}").lower():
        res.problems.append(f"the manager lists it with GUID {found.guid}, its sidecars say {guid}")
    status = found.status.lower()
    if status == "legacy" and not entry.get("sidecars"):
        res.notes.append("the manager imported it as Legacy: this version was captured without sidecars")
    elif status not in ("enabled", "disabled"):
        res.problems.append(f"the manager lists it with status {found.status!r}")


def forget_drilled(manager: DrillManager, datastore: str, entry: dict[str, Any], res: DrillResult) -> None:
    """Delete the drilled copy from the manager; never a volume that is not the drilled copy."""
    try:
        manager.wait_jobs(IMPORT_TIMEOUT_S)  # an import still running would list it only after the delete
    except Error as exc:
        res.problems.append(f"the manager's jobs did not finish before the clean-up: {exc}")
    try:
        listed = [v for v in manager.inventory() if v.datastore == datastore and v.relpath == entry.get("path")]
        original = str((entry.get("avm") or {}).get("guid") or "").strip("{}").lower()
        for v in listed:
            if original and v.guid.strip("{}").lower() == original:
                res.problems.append(
                    f"the manager took the drilled copy for {v.name!r} (id {v.id}, same GUID): not deleted there; "
                    f"remove the location {v.relpath} of that volume in the manager"
                )
                continue
            refused = manager.delete_volume(v)
            if refused:
                res.problems.append(f"the manager refused to delete the drilled copy (id {v.id}): {refused}")
        if listed:
            manager.wait_jobs(IMPORT_TIMEOUT_S)
        left = [v for v in manager.inventory() if v.datastore == datastore and v.relpath == entry.get("path")]
        if left:
            res.problems.append(f"the manager still lists the drilled copy as id {left[0].id}; delete it there")
        elif listed:
            res.checks.append("deleted from the manager again")
    except Error as exc:
        res.problems.append(f"could not remove the drilled copy from the manager: {exc}")


def remove_drilled(dest: Transport, entry: dict[str, Any], res: DrillResult) -> None:
    """Remove every file of the drilled copy (and leftovers of an interrupted write), then its folder."""
    try:
        for path in entry.get("files") or []:
            dest.remove(path)
            dest.clean_partials(path)
        left = [p for p in entry.get("files") or [] if dest.stat(p) is not None]
    except (Error, OSError) as exc:
        res.problems.append(f"could not remove the drilled copy from {dest.describe()}: {exc}")
        return
    if left:
        res.problems.append(f"{left[0]} is still on {dest.describe()}")
        return
    folder = posixpath.dirname(str(entry.get("path") or ""))
    if not posixpath.basename(folder).startswith(DRILL_FOLDER):
        return
    try:
        if not dest.remove_dir(folder):
            res.notes.append(f"the folder {folder} on {dest.describe()} holds other files and was left in place")
    except (Error, OSError) as exc:
        res.notes.append(f"the empty folder {folder} is left on {dest.describe()} ({exc})")
