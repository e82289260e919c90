"""verify --live: compare the datastores (and the manager) with the newest snapshot.

A read-only AppStack or package whose size, mtime or (with ``rehash``) content
changed since it was captured is drift: corruption or tampering. Volumes the
manager lists that were never captured are unprotected; captured volumes gone
from their datastore are missing; copies of one volume on several datastores
(storage-group replicas) whose captured content differs are reported too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from catalog.errors import Error
from catalog.repo import Repository
from toolkit.layout import find_volumes
from toolkit.ops.restore import landed_digest
from toolkit.ops.snapshot import Source

CHANGING_KINDS = frozenset({"writable"})  # written by desktops all day: change is not drift


@dataclass(slots=True)
class LiveReport:
    problems: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    volumes_checked: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, volume: str, detail: str) -> None:
        self.problems.append({"kind": kind, "volume": volume, "detail": detail})

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "level": "live",
            "volumes_checked": self.volumes_checked,
            "bytes_read": self.bytes_read,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def live_check(repo: Repository, sources: list[Source], *, rehash: bool = False) -> LiveReport:
    report = LiveReport()
    index = repo.index
    chunk_size = repo.config.chunk_size
    by_path: dict[str, list[tuple[str, dict[str, str]]]] = defaultdict(list)
    for source in sources:
        latest = index.latest_versions(source.datastore)
        try:
            found = {v.key: v for v in find_volumes(source.datastore, source.transport)}
        except (Error, OSError) as exc:
            report.warnings.append(f"datastore {source.datastore} could not be listed: {exc}")
            continue
        for key, version in sorted(latest.items()):
            if version.state == "deleted":
                continue
            good = version if index.files(version.version_id) else index.newest_with_files(key, version.created_at)
            if good is None:
                continue
            recorded = {f.path: f for f in index.files(good.version_id)}
            by_path[good.path].append((source.datastore, {p: f.digest for p, f in recorded.items()}))
            vol = found.get(key)
            if vol is None:
                report.add("missing", key, f"captured {good.created_at[:19]}, no longer on the datastore")
                continue
            report.volumes_checked += 1
            if vol.kind in CHANGING_KINDS:
                continue
            for vf in vol.files:
                before = recorded.get(vf.info.path)
                if before is None:
                    report.add("drift", key, f"{vf.info.path} appeared since the capture")
                elif vol.objects and vf.role == "descriptor":
                    # A vSAN disk was stored from a flat copy: its stored descriptor is the copy's, with the
                    # vSAN descriptor's time. The time is what can be compared; the content only by a snapshot.
                    if vf.info.mtime_ns != before.mtime_ns:
                        report.add("drift", key, f"{vf.info.path} changed time since {good.created_at[:19]}")
                elif (vf.info.size, vf.info.mtime_ns) != (before.size, before.mtime_ns):
                    report.add("drift", key, f"{vf.info.path} changed size or time since {good.created_at[:19]}")
                elif rehash:
                    now = landed_digest(source.transport, vf.info.path, vf.info.size, chunk_size)
                    report.bytes_read += vf.info.size
                    if now != before.digest:
                        report.add(
                            "drift", key, f"{vf.info.path}: content differs from the capture (same size and time)"
                        )
        for path in sorted(set(source.managed or {}) - {v.path for v in latest.values() if v.state != "deleted"}):
            report.add("unprotected", f"{source.datastore}/{path}", "the manager lists it; no snapshot holds it")
    for path, copies in sorted(by_path.items()):
        if len({tuple(sorted(d.items())) for _ds, d in copies}) > 1:
            where = ", ".join(ds for ds, _ in copies)
            report.add("replica-mismatch", path, f"the copies on {where} were captured with different content")
    return report
