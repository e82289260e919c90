"""Register restored volumes with App Volumes Manager and confirm it took them back."""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Any, Protocol

from catalog.errors import Error

if TYPE_CHECKING:  # the HTTP client loads only when a manager is reached
    from toolkit.avm import AssignmentOutcome, AvmVolume


class Manager(Protocol):
    def import_folder(self, datastore: str, path: str, datacenter: str = "") -> None: ...

    def wait_jobs(self, timeout_s: float = 300.0) -> None: ...

    def inventory(self) -> list[AvmVolume]: ...

    def restore_assignments(self, volume: AvmVolume, recorded: dict[str, Any]) -> list[AssignmentOutcome]: ...


def in_use(inventory: list[AvmVolume], datastore: str) -> dict[str, str]:
    """Descriptor paths on ``datastore`` that desktops use now, with why."""
    out = {}
    for v in inventory:
        if v.datastore != datastore:
            continue
        counts = ("mount_count", "attachments_total", "attachment_count")
        mounts = max(int(v.record.get(k) or 0) for k in counts)
        if v.attached or mounts > 0:
            out[v.relpath] = f"attached to {mounts or 'some'} desktop(s) per the manager"
    return out


def register(
    manager: Manager,
    datastore: str,
    volumes: list[dict[str, Any]],
    *,
    timeout_s: float = 300.0,
    restore_assignments: bool = False,
) -> None:
    """Import the folders of the restored volumes, wait for the jobs, then check each volume.

    Each entry of ``volumes`` (a restore report's) gets ``registered`` (bool) and,
    when the manager did not take it back as expected, ``register_error``. A volume
    restored under a new name is expected with the GUID its sidecars were given.
    With ``restore_assignments``, the assignments recorded at capture are created
    again on each registered volume (``entry["assignments"]``: one outcome each);
    any that could not be leaves the status "registered, assignments incomplete".
    """
    done = [v for v in volumes if v.get("status") in ("restored", "in place")]
    for folder in sorted({posixpath.dirname(v["path"]) for v in done}):
        manager.import_folder(datastore, folder)
    if done:
        manager.wait_jobs(timeout_s)
    listed = {v.relpath: v for v in manager.inventory() if v.datastore == datastore}
    for entry in done:
        found = listed.get(entry["path"])
        expected = entry.get("guid") if "renamed_from" in entry else (entry.get("avm") or {}).get("guid")
        problem = None
        if found is None:
            problem = "the manager does not list it after the import"
        elif expected and found.guid and found.guid.strip("{}").lower() != str(expected).strip("{}").lower():
            origin = "was written into its sidecars" if "renamed_from" in entry else "was recorded"
            problem = f"the manager lists it with GUID {found.guid}, {expected} {origin}"
        elif found.status.lower() not in ("enabled", "disabled"):
            problem = f"the manager lists it with status {found.status!r}"
            if found.status.lower() == "legacy":
                problem += " (imported without its metadata sidecar)"
        entry["registered"] = problem is None
        if problem is not None:
            entry["register_error"] = problem
            entry["status"] = "restored, not registered"
        else:
            entry["status"] = "registered"
            entry["manager_id"] = found.id if found else None
            if restore_assignments and found is not None and entry.get("avm"):
                reassign(manager, found, entry)


def reassign(manager: Manager, found: AvmVolume, entry: dict[str, Any]) -> None:
    """Create the recorded assignments on a registered volume; the entry says what came of each."""
    try:
        outcomes = manager.restore_assignments(found, entry["avm"])
    except Error as exc:
        entry["assignments"] = []
        entry["status"] = "registered, assignments incomplete"
        entry["assignments_error"] = str(exc)
        return
    entry["assignments"] = [o.to_json() for o in outcomes]
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        entry["status"] = "registered, assignments incomplete"
        entry["assignments_error"] = f"{failed[0].who}: {failed[0].detail}{more}"


class NoManager(Error):
    template = "--register needs the App Volumes Manager of site {site!r}, and none is configured"
    hint = "add [sites.SITE.manager] to the configuration, or restore without --register"
    code = "no_manager"
