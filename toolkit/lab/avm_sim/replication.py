"""Storage-group replication: make every member datastore hold the same AppStacks/packages.

A pass compares the replicated folders of the members. A volume present on some members
only is either new (never seen everywhere before: it is copied to the others, descriptor
last) or deleted (it was everywhere after the previous pass: the remaining copies are
removed). Deletions propagate, as they do on a real manager.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.lab.avm_sim import vmdk
from toolkit.lab.avm_sim.model import Location, SimState, StorageGroup, now

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplicationReport:
    """What one pass did; entries look like ``[ds2] appvolumes/packages/x.vmdk``."""

    copied: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    def __add__(self, other: ReplicationReport) -> ReplicationReport:
        return ReplicationReport(self.copied + other.copied, self.deleted + other.deleted, self.skipped + other.skipped)


@dataclass(slots=True)
class _Pass:
    copied: list[tuple[str, str, str]] = field(default_factory=list)  # (datastore, folder, file name)
    deleted: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def report(self) -> ReplicationReport:
        return ReplicationReport(
            tuple(f"[{d}] {f}/{n}" for d, f, n in self.copied),
            tuple(f"[{d}] {f}/{n}" for d, f, n in self.deleted),
            tuple(self.skipped),
        )


def replicate_group(
    state: SimState, group: StorageGroup, roots: dict[str, Path], folders: list[str]
) -> ReplicationReport:
    """One synchronous pass over one group; updates the manager's locations to match."""
    members = [m for m in group.members if m in roots]
    work = _Pass()
    if len(members) < 2:
        return work.report()
    settled: set[tuple[str, str]] = set()
    for folder in folders:
        settled |= _replicate_folder(group, members, roots, folder, work)
    with state.lock:
        group.settled = settled
        group.replicated_at = now()
        _sync_locations(state, work, set(members))
    return work.report()


def _replicate_folder(
    group: StorageGroup, members: list[str], roots: dict[str, Path], folder: str, work: _Pass
) -> set[tuple[str, str]]:
    present = {m: {p.name for p in vmdk.scan_descriptors(roots[m] / folder)} for m in members}
    for name in sorted(set().union(*present.values())):
        holders = [m for m in members if name in present[m]]
        if len(holders) == len(members):
            continue
        if (folder, name) in group.settled:
            for m in holders:
                vmdk.delete_volume(roots[m] / folder / name)
                present[m].discard(name)
                work.deleted.append((m, folder, name))
            continue
        source = roots[holders[0]] / folder / name
        if vmdk.missing_extents(vmdk.volume_files(source)):
            work.skipped.append(f"[{holders[0]}] {folder}/{name}: extents incomplete")
            continue
        for m in members:
            if m not in holders:
                vmdk.copy_volume(source, roots[m] / folder)
                present[m].add(name)
                work.copied.append((m, folder, name))
    everywhere = set.intersection(*present.values())
    return {(folder, name) for name in everywhere}


def _sync_locations(state: SimState, work: _Pass, members: set[str]) -> None:
    """Copies become extra locations of the volume they copy; deleted copies stop being ones."""
    gone = {(folder, name) for _, folder, name in work.deleted}

    def in_group(loc: Location) -> bool:
        return loc.datastore in members

    for volume in state.volumes.values():
        before = len(volume.locations)
        volume.locations = [loc for loc in volume.locations if not (in_group(loc) and (loc.path, loc.filename) in gone)]
        if before and not volume.locations:
            volume.status = "missing"
        for datastore, folder, name in work.copied:
            new = Location(datastore, folder, name)
            same_file = any(in_group(loc) and (loc.path, loc.filename) == (folder, name) for loc in volume.locations)
            if same_file and not any(loc.same_place(new) for loc in volume.locations):
                volume.locations.append(new)


@dataclass
class Replicator:
    """Background thread running ``run_pass`` every ``interval_s`` seconds."""

    run_pass: Callable[[], object]
    interval_s: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="avm-sim-replication", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_pass()
            except Exception:  # keep replicating after one bad pass, like the real job
                log.exception("replication pass failed")
