"""Restore drills: restore volumes to scratch space, check them as a hypervisor would, clean up, time it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from catalog.errors import Error
from catalog.repo import Repository
from toolkit.ops.restore import plan_restore, restore
from toolkit.transports.local import LocalTransport
from toolkit.vmdk import parse_descriptor

QEMU_CHECK_TIMEOUT_S: Final = 600.0
NTFS_OEM: Final = b"NTFS    "


@dataclass(slots=True)
class DrillResult:
    volume: str
    snapshot_id: str
    size: int
    seconds: float = 0.0
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

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
            "checks": self.checks,
            "problems": self.problems,
            "ok": self.ok,
        }


def file_system_signature(flat: Path) -> str | None:
    """'ntfs' when the flat extent holds NTFS (bare, or in the first MBR partition), else None."""
    with flat.open("rb") as f:
        boot = f.read(512)
        if boot[3:11] == NTFS_OEM:
            return "ntfs"
        if len(boot) == 512 and boot[510:512] == b"\x55\xaa":
            for i in range(4):
                entry = boot[446 + 16 * i : 462 + 16 * i]
                if entry[4] in (0x07, 0x27):
                    start = int.from_bytes(entry[8:12], "little") * 512
                    f.seek(start)
                    if f.read(11)[3:11] == NTFS_OEM:
                        return "ntfs"
    return None


def check_volume(root: Path, descriptor_path: str, files: list[str]) -> tuple[list[str], list[str]]:
    """(checks passed, problems) for a restored volume under ``root``."""
    checks: list[str] = []
    problems: list[str] = []
    desc_file = root / descriptor_path
    try:
        desc = parse_descriptor(descriptor_path, desc_file.read_bytes()[:65536])
    except Error as exc:
        return checks, [str(exc)]
    if desc is None:
        checks.append("self-contained sparse VMDK")
        return checks, problems
    checks.append(f"descriptor parses ({desc.create_type}, {len(desc.extents)} extent(s))")
    for ext in desc.extents:
        if ext.filename is None:
            continue
        extent = desc_file.parent / ext.filename
        if not extent.exists():
            problems.append(f"extent {ext.filename} is missing")
            continue
        if ext.kind in ("FLAT", "VMFS"):
            need = (ext.offset + ext.sectors) * 512
            if extent.stat().st_size < need:
                problems.append(f"extent {ext.filename} has {extent.stat().st_size} bytes, {need} needed")
            else:
                checks.append(f"extent {ext.filename} matches {ext.sectors} sectors")
            fs = file_system_signature(extent)
            if fs:
                checks.append(f"{fs} file system signature")
    qemu = shutil.which("qemu-img")
    if qemu:
        proc = subprocess.run(
            [qemu, "check", str(desc_file)], capture_output=True, text=True, timeout=QEMU_CHECK_TIMEOUT_S, check=False
        )
        # qemu-img check: 0 clean; 63 means "this format has no consistency checks" (flat), not a failure.
        if proc.returncode in (0, 63):
            checks.append("qemu-img check passes" if proc.returncode == 0 else "qemu-img opens it")
        else:
            problems.append(f"qemu-img check failed: {(proc.stdout + proc.stderr).strip()[:200]}")
    return checks, problems


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


def drill(repo: Repository, when: str, keys: list[str], *, scratch: Path | None = None) -> list[DrillResult]:
    """Restore each volume into a scratch directory, check it, and always remove it."""
    results: list[DrillResult] = []
    base = Path(tempfile.mkdtemp(prefix="toolkit-drill-", dir=scratch))
    try:
        for key in keys:
            where = base / f"v{len(results)}"
            started = time.monotonic()
            report = restore(repo, when, LocalTransport(where), patterns=[key])
            entry = next(v for v in report.volumes if v["key"] == key)
            res = DrillResult(key, entry.get("snapshot", ""), int(entry.get("size", 0)))
            if entry["status"] != "restored":
                res.problems.append(f"restore {entry['status']}: {entry.get('error') or entry.get('reason')}")
            else:
                res.checks.append("restored with the recorded digest")
                checks, problems = check_volume(where, entry["path"], entry["files"])
                res.checks += checks
                res.problems += problems
            res.seconds = time.monotonic() - started
            shutil.rmtree(where, ignore_errors=True)
            results.append(res)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results
