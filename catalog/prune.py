"""Retention and garbage collection.

``select_snapshots`` is pure: which snapshots a policy keeps, and why. ``prune``
removes the others (catalog rows first, then documents), then collects garbage:
packs with no live chunk are deleted, packs whose live share is below a
threshold are repacked (live records copied into new packs, catalog updated,
then the old pack deleted). A crash at any point leaves only unreferenced data
behind, which the next prune collects; no committed snapshot is touched.

In an object store with Object Lock, a pack or document still under retention is
not deleted: it is skipped and listed in the report with the date it can go (a
locked pack is not repacked either: the copy would double its storage until then).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from catalog.assemble import load_manifest
from catalog.errors import Error
from catalog.index import SnapshotRow
from catalog.repo import Repository, now_iso
from catalog.types import HOLE_ID, ChunkId, ChunkLocation, PackId

Event = Callable[[str, dict[str, Any]], None]  # (kind, data): the toolkit's progress display takes these

log = logging.getLogger(__name__)

DEFAULT_REPACK_BELOW: Final = 0.5  # repack a pack once less than half of it is still referenced


class ReadersActive(Error):
    template = "{count} reader(s) are using the repository ({who}); prune would delete packs under them"
    hint = "run prune when verify and restore are done (schedule it after them), or stop them first"
    code = "readers_active"
    exit_code = 3


class ManifestUnreadable(Error):
    template = "manifest {manifest_id} of a kept version cannot be read ({detail}); nothing was collected"
    hint = "run: toolkit verify --read-data, and repair before pruning"
    code = "manifest_unreadable"
    exit_code = 1


class NothingToKeep(Error):
    template = "the policy keeps no snapshot"
    hint = (
        "give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly,"
        " or a [retention] table in the configuration"
    )
    code = "nothing_to_keep"


@dataclass(frozen=True, slots=True)
class Policy:
    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    keep_deleted_days: float | None = None  # None: keep a deleted volume's last version forever

    @property
    def empty(self) -> bool:
        return not (self.last or self.daily or self.weekly or self.monthly or self.yearly)


_BUCKETS: Final[dict[str, Callable[[datetime], object]]] = {
    "daily": lambda t: t.date(),
    "weekly": lambda t: t.isocalendar()[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: t.year,
}


def select_snapshots(
    snapshots: Sequence[SnapshotRow],
    policy: Policy,
    protected: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """snapshot id -> reasons to keep it; snapshots absent from the result are removed.

    The newest snapshot is always kept. ``protected`` adds reasons (a deleted
    volume's last version, for instance). Times are bucketed in UTC.
    """
    if policy.empty:
        raise NothingToKeep()
    newest_first = sorted(snapshots, key=lambda s: (s.created_at, s.id), reverse=True)
    keep: dict[str, list[str]] = {}
    if newest_first:
        keep.setdefault(newest_first[0].id, []).append("newest")
    for s in newest_first[: policy.last]:
        keep.setdefault(s.id, []).append("last")
    for name, bucket_of in _BUCKETS.items():
        count = getattr(policy, name)
        seen: list[object] = []
        for s in newest_first:
            if len(seen) >= count:
                break
            b = bucket_of(datetime.fromisoformat(s.created_at))
            if b not in seen:
                seen.append(b)
                keep.setdefault(s.id, []).append(name)
    for snap_id, why in (protected or {}).items():
        keep.setdefault(snap_id, []).append(why)
    return keep


def deleted_volume_protection(repo: Repository, policy: Policy, now: datetime) -> dict[str, str]:
    """Snapshots holding the last version of a volume that is now deleted (within the keep time)."""
    index = repo.index
    out: dict[str, str] = {}
    latest: dict[str, Any] = {}
    for v in index.all_versions():  # ordered by key, then time
        latest[v.volume_key] = v
    for key, v in latest.items():
        if v.state != "deleted":
            continue
        if policy.keep_deleted_days is not None:
            gone_at = datetime.fromisoformat(v.created_at)
            if now - gone_at > timedelta(days=policy.keep_deleted_days):
                continue
        good = index.newest_with_files(key, v.created_at)
        if good is not None:
            out[good.snapshot_id] = f"last version of deleted volume {key}"
    return out


@dataclass(slots=True)
class PruneReport:
    dry_run: bool
    kept: dict[str, list[str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    packs_deleted: int = 0
    packs_repacked: int = 0
    bytes_freed: int = 0
    bytes_unreferenced: int = 0
    locked: list[dict[str, str]] = field(default_factory=list)  # {"kind": pack|snapshot, "id", "until"}

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "kept": self.kept,
            "removed": self.removed,
            "packs_deleted": self.packs_deleted,
            "packs_repacked": self.packs_repacked,
            "bytes_freed": self.bytes_freed,
            "bytes_unreferenced": self.bytes_unreferenced,
            "locked": self.locked,
        }


def live_chunks(repo: Repository, without: set[str] | None = None) -> set[bytes]:
    """Every chunk id (manifests included) a file version references, ignoring snapshots in ``without``."""
    live: set[bytes] = set()
    lost = repo.index.lost_chunks()  # a manifest marked lost by repair names nothing that could be kept
    for manifest_id in repo.index.manifests_in_use(without or set()):
        live.add(manifest_id)
        if manifest_id in lost:
            continue
        try:
            manifest = load_manifest(repo.index, repo.reader, manifest_id)
        except Error as exc:
            # Its chunks cannot be known, so no chunk can be called dead.
            raise ManifestUnreadable(manifest_id=manifest_id.hex(), detail=str(exc)) from exc
        live.update(c for c in manifest.chunk_ids if c != HOLE_ID)
    return live


def collect_garbage(
    repo: Repository,
    live: set[bytes],
    *,
    dry_run: bool,
    repack_below: float = DEFAULT_REPACK_BELOW,
    report: PruneReport,
    progress: Event | None = None,
) -> None:
    """Delete packs with no live chunk; repack those whose live share is below ``repack_below``.

    ``progress`` hears a ``plan`` (the live bytes to copy) and then ``bytes`` as they are copied.
    """
    index = repo.index
    emit = progress or (lambda _kind, _data: None)
    chosen: list[tuple[str, int, int]] = []  # pack id, size, live bytes
    for pack_id, size, _count, _verified in index.packs():
        chunks = index.chunks_in_pack(pack_id)
        live_bytes = sum(c[2] for cid, c in chunks.items() if cid in live)
        dead_bytes = sum(c[2] for cid, c in chunks.items() if cid not in live)
        report.bytes_unreferenced += dead_bytes
        if dead_bytes == 0 or (live_bytes and live_bytes / max(size, 1) >= repack_below):
            continue
        until = repo.pack_retained_until(pack_id)
        if until is not None:  # neither deleted nor repacked before then; its rows stay, so it stays known
            report.locked.append({"kind": "pack", "id": pack_id, "until": until})
            continue
        report.packs_deleted += live_bytes == 0
        report.packs_repacked += live_bytes > 0
        if dry_run:
            report.bytes_freed += size - live_bytes
            continue
        chosen.append((pack_id, size, live_bytes))
    emit("plan", {"volumes": 0, "bytes": sum(live_bytes for _p, _s, live_bytes in chosen)})
    if chosen:
        repo.check_writer_lock()  # repacking points the catalog at new packs
    writer = repo.pack_writer(lambda pid, size, entries: index.add_pack(pid, size, entries, now_iso(), replace=True))
    doomed: list[tuple[str, int]] = []
    try:
        for pack_id, size, _live_bytes in chosen:
            for cid, (type_, offset, stored, raw, codec, sha) in index.chunks_in_pack(pack_id).items():
                if cid in live:
                    loc = ChunkLocation(ChunkId(cid), PackId(pack_id), offset, stored, raw, codec, sha)
                    writer.add(ChunkId(cid), type_, codec, raw, sha, repo.reader.read_stored(loc))
                    emit("bytes", {"n": stored})
            doomed.append((pack_id, size))
        writer.seal()  # live copies are durable and the catalog points at them (rows replaced)
    except BaseException:
        writer.abort()
        raise
    repo.reader.close()
    for pack_id, size in doomed:
        if repo.readers():
            # A reader started meanwhile: it may still know the old locations. Collect the rest next time.
            break
        until = repo.delete_pack(pack_id)  # rows still naming this pack (the dead chunks), then the file
        if until is not None:
            report.locked.append({"kind": "pack", "id": pack_id, "until": until})
            continue
        report.bytes_freed += size
    report.bytes_freed -= writer.sealed_bytes  # what the repacked live chunks take again


def prune(
    repo: Repository,
    policy: Policy,
    *,
    dry_run: bool = False,
    now: datetime,
    repack_below: float = DEFAULT_REPACK_BELOW,
    progress: Event | None = None,
) -> PruneReport:
    """Apply ``policy``, then collect garbage; the caller holds the writer lock."""
    report = PruneReport(dry_run)
    readers = repo.readers()
    if readers and not dry_run:
        who = ", ".join(f"{r.command} pid {r.pid} on {r.host}" for r in readers[:3])
        raise ReadersActive(count=len(readers), who=who)
    snaps = repo.index.snapshots()
    protected = deleted_volume_protection(repo, policy, now)
    report.kept = select_snapshots(snaps, policy, protected)
    report.removed = [s.id for s in snaps if s.id not in report.kept]
    if not dry_run:
        for snap_id, retained in repo.retry_forgotten():  # dropped by an earlier prune, document retained then
            report.locked.append({"kind": "snapshot", "id": snap_id, "until": retained})
        for snap_id in report.removed:
            # Catalog rows first: a crash before the document is gone brings the snapshot back
            # (reconcile indexes it again), and no chunk has been collected yet.
            until = repo.forget_snapshot(snap_id)
            if until is not None:
                report.locked.append({"kind": "snapshot", "id": snap_id, "until": until})
    live = live_chunks(repo, set(report.removed) if dry_run else None)
    collect_garbage(repo, live, dry_run=dry_run, repack_below=repack_below, report=report, progress=progress)
    return report
