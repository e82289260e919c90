"""``toolkit status``: is every volume protected, how recently, and what does the repository hold?

Everything comes from the catalog, plus the newest snapshot document of each
datastore for what the catalog does not keep (the site, whether the manager
listed the volume, the warnings of the run). Nothing is read from the
datastores or the manager: status answers from the repository alone, so a
monitoring check can run it every few minutes.

A volume's *last good capture* is its newest version that holds files (state
new, changed or unchanged). Its condition is one of:

- ``ok``: captured in the newest snapshot of its datastore, within the age limit;
- ``stale``: its last good capture is older than the limit;
- ``failed``: the newest snapshot could not capture it (reason given); an older capture exists;
- ``skipped``: the newest snapshot skipped it on purpose (a writable in use, a volume
  being provisioned) and its last good capture is within the limit;
- ``never captured``: failed or skipped in every snapshot so far, e.g. the manager lists
  it but its file is missing;
- ``deleted``: gone from its datastore; its last good capture stays restorable.

Problems (exit code 1) are stale, failed and never-captured volumes, datastores
not captured within the limit or configured but never captured, warnings of the
newest snapshot of a datastore, a datastore whose newest snapshot lacks the
records of its site's manager, and a verify level whose newest run found damage.
Warnings do not change the exit code: volumes skipped with a recent capture,
deletions of the last week, datastores no longer configured, and no data
verification for more than a week.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from catalog.errors import Error
from catalog.index import Index, SnapshotRow, VersionRow
from catalog.repo import Repository
from toolkit.config import MAX_AGE_HOURS, Config
from toolkit.progress import human_bytes

CAPTURED_STATES: Final = frozenset({"new", "changed", "unchanged"})
DEFAULT_MAX_AGE_HOURS: Final = MAX_AGE_HOURS
VERIFY_WARN_DAYS: Final = 8.0  # the weekly verify timer plus a day of slack
RECENT_DELETION_DAYS: Final = 7.0  # older deletions stay in the JSON but leave the text table
GROWTH_WINDOW_DAYS: Final = 7.0  # pack bytes added over this window, for capacity planning
DATA_LEVELS: Final = ("data", "data-subset")  # the verify levels that read pack bytes
VERIFY_RUNS_READ: Final = 10_000  # enough recorded runs to find the newest of every level
CONDITIONS: Final = ("ok", "stale", "failed", "skipped", "never captured", "deleted")


@dataclass(frozen=True, slots=True)
class VolumeStatus:
    key: str
    name: str
    kind: str
    site: str
    datastore: str
    state: str  # of the newest version
    reason: str | None
    seen_at: str  # created_at of the snapshot holding the newest version
    last_good_at: str | None
    last_good_snapshot: str | None
    age_hours: float | None  # of the last good capture
    size: int  # of the last good capture
    managed: bool | None  # the manager listed it in the newest snapshot; None: unknown
    condition: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "kind": self.kind,
            "site": self.site,
            "datastore": self.datastore,
            "state": self.state,
            "reason": self.reason,
            "seen_at": self.seen_at,
            "last_good_at": self.last_good_at,
            "last_good_snapshot": self.last_good_snapshot,
            "age_hours": _round(self.age_hours),
            "size": self.size,
            "managed": self.managed,
            "condition": self.condition,
        }


@dataclass(slots=True)
class DatastoreStatus:
    site: str
    datastore: str
    configured: bool | None  # None when no configuration was given
    last_listed_at: str | None  # newest snapshot that recorded any version on it
    age_hours: float | None
    volumes: list[VolumeStatus] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(CONDITIONS, 0)
        for v in self.volumes:
            out[v.condition] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "datastore": self.datastore,
            "configured": self.configured,
            "last_listed_at": self.last_listed_at,
            "age_hours": _round(self.age_hours),
            "counts": self.counts(),
            "volumes": [v.to_json() for v in self.volumes],
        }


@dataclass(frozen=True, slots=True)
class VerifyRun:
    started_at: str
    level: str  # metadata | data | data-subset | restore-path | drill
    scope: str
    ok: bool
    problems: int
    bytes_read: int

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "level": self.level,
            "scope": self.scope,
            "ok": self.ok,
            "problems": self.problems,
            "bytes_read": self.bytes_read,
        }


@dataclass(frozen=True, slots=True)
class VerifyStatus:
    """The newest recorded verify run of each level, and what data verification has read (``packs.verified_at``)."""

    latest: tuple[VerifyRun, ...]  # newest first, one per level
    packs_total: int
    packs_read: int  # read and found intact at least once
    bytes_total: int
    bytes_read: int
    newest_read_at: str | None
    oldest_read_at: str | None  # of the packs read; with packs_read == packs_total, all were read since then

    def newest(self, levels: Iterable[str]) -> VerifyRun | None:
        wanted = set(levels)
        return next((r for r in self.latest if r.level in wanted), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "latest": [r.to_json() for r in self.latest],
            "packs_total": self.packs_total,
            "packs_read": self.packs_read,
            "bytes_total": self.bytes_total,
            "bytes_read": self.bytes_read,
            "newest_read_at": self.newest_read_at,
            "oldest_read_at": self.oldest_read_at,
        }


@dataclass(frozen=True, slots=True)
class StorageStatus:
    pack_bytes: int  # what the repository occupies (pack files)
    stored_bytes: int  # data chunks as stored (compressed)
    raw_bytes: int  # data chunks before compression, each once
    logical_bytes: int  # every version of every volume, as a restore would write them
    protected_bytes: int  # the last good capture of each volume not deleted
    added_bytes: int  # pack bytes added by snapshots in the last GROWTH_WINDOW_DAYS

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.pack_bytes if self.pack_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "pack_bytes": self.pack_bytes,
            "stored_bytes": self.stored_bytes,
            "raw_bytes": self.raw_bytes,
            "logical_bytes": self.logical_bytes,
            "protected_bytes": self.protected_bytes,
            "dedup_ratio": round(self.dedup_ratio, 2),
            "added_bytes": self.added_bytes,
            "added_window_days": GROWTH_WINDOW_DAYS,
        }


@dataclass(slots=True)
class StatusReport:
    repository: str
    checked_at: str
    max_age_hours: float
    snapshot_count: int
    newest_snapshot: str | None
    newest_snapshot_at: str | None
    datastores: list[DatastoreStatus]
    storage: StorageStatus
    verify: VerifyStatus
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def volumes(self) -> list[VolumeStatus]:
        return [v for d in self.datastores for v in d.volumes]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "repository": self.repository,
            "checked_at": self.checked_at,
            "max_age_hours": self.max_age_hours,
            "snapshots": {
                "count": self.snapshot_count,
                "newest": self.newest_snapshot,
                "newest_at": self.newest_snapshot_at,
            },
            "datastores": [d.to_json() for d in self.datastores],
            "storage": self.storage.to_json(),
            "verify": self.verify.to_json(),
            "problems": self.problems,
            "warnings": self.warnings,
        }


def _round(hours: float | None) -> float | None:
    return None if hours is None else round(hours, 2)


def _parse_time(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _hours(now: datetime, text: str | None) -> float | None:
    return None if text is None else (now - _parse_time(text)).total_seconds() / 3600


def format_age(hours: float | None) -> str:
    if hours is None:
        return "-"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def _short_time(text: str | None) -> str:
    return "-" if text is None else text[:16].replace("T", " ")


class _Documents:
    """Snapshot documents loaded on demand, at most once each; a damaged one becomes a problem."""

    def __init__(self, repo: Repository, problems: list[str]) -> None:
        self.repo = repo
        self.problems = problems
        self.cache: dict[str, dict[str, Any] | None] = {}

    def get(self, snapshot_id: str) -> dict[str, Any] | None:
        if snapshot_id not in self.cache:
            try:
                self.cache[snapshot_id] = self.repo.load_snapshot_doc(snapshot_id)
            except Error as exc:
                self.problems.append(f"{exc}; run: toolkit verify")
                self.cache[snapshot_id] = None
        return self.cache[snapshot_id]


def _classify(newest: VersionRow, good: VersionRow | None, age: float | None, max_age_hours: float) -> str:
    if newest.state == "deleted":
        return "deleted"
    if good is None:
        return "never captured"
    if newest.state == "failed":
        return "failed"
    if age is not None and age > max_age_hours:
        return "stale"
    if newest.state == "skipped":
        return "skipped"
    return "ok"


def _verify_status(index: Index) -> VerifyStatus:
    try:
        runs = index.verify_runs(limit=VERIFY_RUNS_READ)
    except sqlite3.OperationalError:  # a catalog older than the verify_runs table, opened read-only
        runs = []
    latest: dict[str, VerifyRun] = {}
    for r in runs:  # newest first
        if r["level"] not in latest:
            latest[r["level"]] = VerifyRun(
                r["started_at"], r["level"], r["scope"], bool(r["ok"]), int(r["problems"]), int(r["bytes_read"])
            )
    packs = index.packs()
    read = [(size, when) for _pid, size, _count, when in packs if when is not None]
    times = sorted(when for _size, when in read)
    return VerifyStatus(
        latest=tuple(sorted(latest.values(), key=lambda r: r.started_at, reverse=True)),
        packs_total=len(packs),
        packs_read=len(read),
        bytes_total=sum(size for _pid, size, _count, _when in packs),
        bytes_read=sum(size for size, _when in read),
        newest_read_at=times[-1] if times else None,
        oldest_read_at=times[0] if times else None,
    )


def status(repo: Repository, config: Config | None, now: datetime, max_age_hours: float) -> StatusReport:
    """The protection status of every volume the repository knows, and of every configured datastore.

    ``config`` (optional) names the sites and datastores that should be captured: a
    configured datastore never captured is a problem, and datastores no longer
    configured are shown but not held to the limits. ``now`` is an aware time
    (a naive one is taken as UTC).
    """
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    index = repo.index
    problems: list[str] = []
    warnings: list[str] = []
    docs = _Documents(repo, problems)
    snapshots = index.snapshots()
    if not snapshots:
        problems.append("no snapshot yet: run toolkit snapshot")

    newest, good = _newest_versions(index.all_versions())
    newest_by_source: dict[str, SnapshotRow] = {}  # the newest snapshot asked to capture each source
    for snap in snapshots:  # oldest first: later ones win
        for source in snap.sources:
            newest_by_source[source] = snap

    sites: dict[str, str] = {}  # configured datastore -> its site
    manager_sites: set[str] = set()
    for site_config in config.sites if config is not None else ():
        if site_config.manager is not None:
            manager_sites.add(site_config.name)
        for ds in site_config.datastores:
            sites.setdefault(ds.name, site_config.name)

    on_datastore: dict[str, list[str]] = {}
    for key, version in newest.items():
        on_datastore.setdefault(version.datastore, []).append(key)
    stores = []
    for name in sorted(set(on_datastore) | set(sites)):
        keys = sorted(on_datastore.get(name, []))
        store, entries = _datastore_status(
            name, [newest[k] for k in keys], good, sites, config is not None, newest_by_source.get(name), docs, now
        )
        store.volumes = [_volume_status(newest[k], good.get(k), store, entries, now, max_age_hours) for k in keys]
        stores.append(store)
        if store.site in manager_sites and _lacks_manager_records(entries):
            problems.append(
                f"datastore {name} (site {store.site}): the newest snapshot has no App Volumes Manager records "
                "(the manager was unreachable, or the datastore was given as a directory); "
                "volumes restored from it come back unassigned"
            )

    # Warnings of the newest snapshot of each source (a datastore that could not be listed, …).
    for snap in sorted({s.id: s for s in newest_by_source.values()}.values(), key=lambda s: (s.created_at, s.id)):
        for text in (docs.get(snap.id) or {}).get("warnings", []):
            problems.append(f"snapshot {snap.id[:12]} ({_short_time(snap.created_at)} UTC): {text}")

    for store in stores:
        _datastore_lines(store, max_age_hours, now, problems, warnings)

    pack_bytes, stored, raw = index.stored_totals()
    since = now - timedelta(days=GROWTH_WINDOW_DAYS)
    storage = StorageStatus(
        pack_bytes=pack_bytes,
        stored_bytes=stored,
        raw_bytes=raw,
        logical_bytes=index.logical_bytes(),
        protected_bytes=sum(v.size for s in stores for v in s.volumes if v.condition != "deleted"),
        added_bytes=sum(
            int(s.stats.get("pack_bytes_added", 0)) for s in snapshots if _parse_time(s.created_at) >= since
        ),
    )
    verify = _verify_status(index)
    for run in verify.latest:
        if not run.ok:
            problems.append(
                f"the newest verify at level {run.level} ({_short_time(run.started_at)} UTC, {run.scope}) "
                f"found {run.problems} problem(s); see toolkit verify --history, and docs/runbook.md"
            )
    data_run = verify.newest(DATA_LEVELS)
    data_at = data_run.started_at if data_run is not None else verify.newest_read_at
    data_age = _hours(now, data_at)
    if verify.packs_total and (data_age is None or data_age > VERIFY_WARN_DAYS * 24):
        warnings.append(
            f"no data verification in the last {VERIFY_WARN_DAYS:g} days"
            + (f" (newest {_short_time(data_at)} UTC)" if data_at else "")
            + ": run toolkit verify --read-data-subset 15 weekly (toolkit schedule)"
        )

    newest_snapshot = snapshots[-1] if snapshots else None
    return StatusReport(
        repository=repo.location,
        checked_at=now.astimezone(UTC).isoformat(timespec="seconds"),
        max_age_hours=max_age_hours,
        snapshot_count=len(snapshots),
        newest_snapshot=newest_snapshot.id if newest_snapshot else None,
        newest_snapshot_at=newest_snapshot.created_at if newest_snapshot else None,
        datastores=sorted(stores, key=lambda d: (d.site, d.datastore)),
        storage=storage,
        verify=verify,
        problems=problems,
        warnings=warnings,
    )


def _newest_versions(versions: Iterable[VersionRow]) -> tuple[dict[str, VersionRow], dict[str, VersionRow]]:
    """Per volume key: the newest version, and the newest one holding files."""
    newest: dict[str, VersionRow] = {}
    good: dict[str, VersionRow] = {}
    for v in versions:  # ordered by key, then time
        newest[v.volume_key] = v
        if v.state in CAPTURED_STATES:
            good[v.volume_key] = v
    return newest, good


def _datastore_status(
    name: str,
    versions: list[VersionRow],
    good: dict[str, VersionRow],
    sites: dict[str, str],
    has_config: bool,
    asked: SnapshotRow | None,
    docs: _Documents,
    now: datetime,
) -> tuple[DatastoreStatus, dict[str, dict[str, Any]]]:
    """A datastore's status (volumes not filled in) and the entries of its newest snapshot document, by key."""
    last = max(versions, key=lambda v: (v.created_at, v.snapshot_id), default=None)
    doc = docs.get(last.snapshot_id) if last is not None else None
    entries = {e["key"]: e for e in (doc or {}).get("volumes", []) if e.get("datastore") == name}
    doc_sites = sorted({str(e.get("site") or "") for e in entries.values()} - {""})
    last_at = last.created_at if last is not None else None
    if last_at is not None and asked is not None and asked.created_at > last_at:
        # A newer run was asked to capture it and recorded nothing: fine when it listed the
        # datastore without trouble (every volume was already recorded as deleted).
        asked_doc = docs.get(asked.id)
        failed = any(str(w).startswith(f"datastore {name} ") for w in (asked_doc or {}).get("warnings", []))
        if asked_doc is not None and not failed:
            last_at = asked.created_at
    store = DatastoreStatus(
        site=sites.get(name) or (doc_sites[0] if doc_sites else ""),
        datastore=name,
        configured=(name in sites) if has_config else None,
        last_listed_at=last_at,
        age_hours=_hours(now, last_at),
    )
    return store, entries


def _volume_status(
    v: VersionRow,
    g: VersionRow | None,
    store: DatastoreStatus,
    entries: dict[str, dict[str, Any]],
    now: datetime,
    max_age_hours: float,
) -> VolumeStatus:
    age = _hours(now, g.created_at) if g is not None else None
    managed = entries.get(v.volume_key, {}).get("managed")  # the document of the newest version
    return VolumeStatus(
        key=v.volume_key,
        name=v.name,
        kind=v.kind,
        site=store.site,
        datastore=store.datastore,
        state=v.state,
        reason=v.reason,
        seen_at=v.created_at,
        last_good_at=g.created_at if g is not None else None,
        last_good_snapshot=g.snapshot_id if g is not None else None,
        age_hours=age,
        size=g.size if g is not None else 0,
        managed=managed if isinstance(managed, bool) else None,
        condition=_classify(v, g, age, max_age_hours),
    )


def _lacks_manager_records(entries: dict[str, dict[str, Any]]) -> bool:
    """True when the newest snapshot captured live volumes without consulting the site's manager."""
    live = [e for e in entries.values() if e.get("state") != "deleted"]
    return bool(live) and all("managed" in e and e["managed"] is None for e in live)


def _datastore_lines(
    store: DatastoreStatus, max_age_hours: float, now: datetime, problems: list[str], warnings: list[str]
) -> None:
    where = f"datastore {store.datastore}" + (f" (site {store.site})" if store.site else "")
    if store.configured is False:
        warnings.append(f"{where} is not in the configuration; its volumes are listed but not checked")
        return
    if store.last_listed_at is None:
        problems.append(f"{where} is configured but has never been captured")
        return
    stale_store = store.age_hours is not None and store.age_hours > max_age_hours
    if stale_store:
        problems.append(
            f"{where}: last captured {format_age(store.age_hours)} ago ({_short_time(store.last_listed_at)} UTC), "
            f"more than {max_age_hours:g} h"
        )
    for v in store.volumes:
        problem, warning = _volume_lines(v, max_age_hours, stale_store, now)
        if problem:
            problems.append(problem)
        if warning:
            warnings.append(warning)


def _volume_lines(v: VolumeStatus, max_age_hours: float, stale_store: bool, now: datetime) -> tuple[str, str]:
    """(problem, warning) lines for one volume; either may be empty."""
    last = (
        f"last good capture {_short_time(v.last_good_at)} UTC ({format_age(v.age_hours)} ago)"
        if v.last_good_at
        else "never captured"
    )
    if v.condition == "never captured":
        return f"{v.key}: never captured; {v.state} in the newest snapshot: {v.reason}", ""
    if v.condition == "failed":
        return f"{v.key}: failed in the newest snapshot: {v.reason}; {last}", ""
    if v.condition == "stale":
        if stale_store:
            return "", ""  # the datastore's own line says it
        why = f"; {v.state} in the newest snapshot: {v.reason}" if v.reason else ""
        return f"{v.key}: {last}, more than {max_age_hours:g} h{why}", ""
    if v.condition == "skipped":
        return "", f"{v.key}: skipped in the newest snapshot ({v.reason}); {last}"
    if v.condition == "deleted" and not _old_deletion(v, now):
        return "", (
            f"{v.key}: deleted from the datastore (noticed {_short_time(v.seen_at)} UTC); "
            f"{last}, restorable with --as-of {(v.last_good_snapshot or '')[:12]}"
        )
    return "", ""


def _old_deletion(v: VolumeStatus, now: datetime) -> bool:
    hours = _hours(now, v.seen_at)
    return v.condition == "deleted" and hours is not None and hours > RECENT_DELETION_DAYS * 24


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def render_status_text(report: StatusReport) -> str:
    """A compact summary: repository, one row per datastore, the volumes that need attention, problems."""
    st, vf = report.storage, report.verify
    lines = []
    if report.newest_snapshot and report.newest_snapshot_at:
        age = _hours(_parse_time(report.checked_at), report.newest_snapshot_at)
        lines.append(
            f"repository {report.repository}: {report.snapshot_count} snapshot(s), newest "
            f"{report.newest_snapshot[:12]} at {_short_time(report.newest_snapshot_at)} UTC ({format_age(age)} ago)"
        )
    else:
        lines.append(f"repository {report.repository}: no snapshot yet")
    lines.append(
        f"size: {human_bytes(st.pack_bytes)} in packs for {human_bytes(st.logical_bytes)} of versions "
        f"(×{st.dedup_ratio:.1f}); restoring every volume writes {human_bytes(st.protected_bytes)}; "
        f"added {human_bytes(st.added_bytes)} in {GROWTH_WINDOW_DAYS:g} days"
    )
    runs = "; ".join(
        f"{r.level} {_short_time(r.started_at)} " + ("ok" if r.ok else f"{r.problems} problem(s)") for r in vf.latest
    )
    lines.append(f"verify: {runs or 'never run'}")
    if vf.packs_total:
        pct = 100 * vf.bytes_read / vf.bytes_total if vf.bytes_total else 0.0
        lines.append(
            f"data read at least once: {vf.packs_read}/{vf.packs_total} packs ({pct:.0f}% of bytes)"
            + (f", oldest read {_short_time(vf.oldest_read_at)} UTC" if vf.oldest_read_at else "")
        )
    if report.datastores:
        rows = []
        for d in report.datastores:
            c = d.counts()
            rows.append(
                [
                    d.site or "-",
                    d.datastore + ("" if d.configured is not False else " (not configured)"),
                    _short_time(d.last_listed_at),
                    format_age(d.age_hours),
                    str(len(d.volumes)),
                    *(str(c[k]) for k in CONDITIONS),
                ]
            )
        headers = ["SITE", "DATASTORE", "CAPTURED (UTC)", "AGE", "VOLUMES"]
        headers += ["OK", "STALE", "FAILED", "SKIPPED", "NEVER", "DELETED"]
        lines += ["", _table(rows, headers)]
    checked = _parse_time(report.checked_at)
    attention = [v for v in report.volumes() if v.condition != "ok" and not _old_deletion(v, checked)]
    if attention:
        rows = [
            [v.key, v.condition, _short_time(v.last_good_at), format_age(v.age_hours), v.reason or ""]
            for v in attention
        ]
        lines += ["", _table(rows, ["VOLUME", "CONDITION", "LAST GOOD (UTC)", "AGE", "REASON"])]
    if report.problems or report.warnings:
        lines.append("")
    lines += [f"problem: {p}" for p in report.problems]
    lines += [f"warning: {w}" for w in report.warnings]
    lines.append("")
    lines.append(
        f"ok: every volume captured within {report.max_age_hours:g} h"
        if report.ok
        else f"{len(report.problems)} problem(s)"
    )
    return "\n".join(lines)
