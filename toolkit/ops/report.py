"""``toolkit report``: one self-contained HTML page (or JSON) on how well the volumes are protected.

Protection per site comes from :func:`toolkit.ops.status.status` (the same
conditions and problems as ``toolkit status``). The history comes from the
catalog: repository growth and deduplication from each snapshot's stats,
versions per volume, and the recorded verify and drill runs. Nothing but the
repository is read.

The page needs no network and runs no script: CSS and the SVG charts are
inline, drawn here. Every string that comes from the catalog (volume names are
user data) is escaped.
"""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from catalog.errors import Error
from catalog.repo import Repository
from toolkit.config import Config
from toolkit.ops.status import (
    DEFAULT_MAX_AGE_HOURS,
    VERIFY_RUNS_READ,
    StatusReport,
    VolumeStatus,
    format_age,
)
from toolkit.ops.status import status as status_job
from toolkit.progress import human_bytes

DEFAULT_DAYS: Final = 90  # a quarter: enough for a trend, short enough to read
PROTECTED: Final = ("ok", "skipped")  # a recent good capture exists
UNPROTECTED: Final = ("never captured", "failed", "stale")
GIB: Final = 1 << 30
CHART_WIDTH: Final = 960
CHART_HEIGHT: Final = 220
STATE_COLOURS: Final = {
    "new": "#1a7f37",
    "changed": "#2f81f7",
    "unchanged": "#8cc084",
    "skipped": "#d29922",
    "failed": "#cf222e",
    "deleted": "#6e7781",
}
CONDITION_COLOURS: Final = {
    "ok": "#1a7f37",
    "skipped": "#9a6700",
    "stale": "#bc4c00",
    "failed": "#cf222e",
    "never captured": "#cf222e",
    "deleted": "#6e7781",
}


@dataclass(frozen=True, slots=True)
class GrowthPoint:
    at: str
    snapshot_id: str
    pack_bytes: int  # the repository's pack bytes after this snapshot (today's size, less what later ones added)
    logical_bytes: int  # every version up to this snapshot, as a restore would write them

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.pack_bytes if self.pack_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "snapshot": self.snapshot_id,
            "pack_bytes": self.pack_bytes,
            "logical_bytes": self.logical_bytes,
            "dedup_ratio": round(self.dedup_ratio, 2),
        }


@dataclass(frozen=True, slots=True)
class RunRow:
    started_at: str
    kind: str  # verify | drill | live
    level: str
    scope: str
    ok: bool
    problems: int
    duration_s: float
    bytes_read: int
    seconds_per_gib: float | None  # drills: the recovery time

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "kind": self.kind,
            "level": self.level,
            "scope": self.scope,
            "ok": self.ok,
            "problems": self.problems,
            "duration_s": round(self.duration_s, 3),
            "bytes_read": self.bytes_read,
            "seconds_per_gib": None if self.seconds_per_gib is None else round(self.seconds_per_gib, 2),
        }


@dataclass(slots=True)
class ProtectionReport:
    status: StatusReport
    generated_at: str
    days: int
    since: str
    versions: dict[str, list[tuple[str, str, str]]]  # volume key -> (created_at, state, snapshot id), in the window
    growth: list[GrowthPoint]
    runs: list[RunRow]  # newest first

    def sites(self) -> dict[str, list[VolumeStatus]]:
        out: dict[str, list[VolumeStatus]] = {}
        for store in self.status.datastores:
            out.setdefault(store.site, []).extend(store.volumes)
        return out

    def to_json(self) -> dict[str, Any]:
        sites = []
        for site, volumes in self.sites().items():
            sites.append(
                {
                    "site": site,
                    "protected": sum(v.condition in PROTECTED for v in volumes),
                    "unprotected": sum(v.condition in UNPROTECTED for v in volumes),
                    "deleted": sum(v.condition == "deleted" for v in volumes),
                    "datastores": [d.datastore for d in self.status.datastores if d.site == site],
                    "volumes": [
                        v.to_json()
                        | {
                            "versions": [
                                {"at": at, "state": state, "snapshot": sid}
                                for at, state, sid in self.versions.get(v.key, [])
                            ]
                        }
                        for v in volumes
                    ],
                }
            )
        return {
            "ok": self.status.ok,
            "repository": self.status.repository,
            "generated_at": self.generated_at,
            "window_days": self.days,
            "since": self.since,
            "problems": self.status.problems,
            "warnings": self.status.warnings,
            "sites": sites,
            "storage": self.status.storage.to_json(),
            "growth": [g.to_json() for g in self.growth],
            "runs": [r.to_json() for r in self.runs],
            "recovery": [
                {"at": r.started_at, "seconds_per_gib": round(r.seconds_per_gib, 2), "ok": r.ok}
                for r in reversed(self.runs)
                if r.seconds_per_gib is not None
            ],
        }


def _parse_time(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _run_kind(level: str) -> str:
    if level == "drill":
        return "drill"
    return "live" if level.startswith("live") else "verify"


def _seconds_per_gib(run: dict[str, Any]) -> float | None:
    """A drill's recovery time: the restore seconds of its volumes over their size (whole run as a fallback)."""
    if run["level"] != "drill":
        return None
    results = [r for r in (run.get("detail") or {}).get("results", []) if isinstance(r, dict)]
    size = sum(int(r.get("size") or 0) for r in results)
    seconds = sum(float(r.get("seconds") or 0) for r in results)
    if not size:
        size, seconds = int(run["bytes_read"]), float(run["duration_s"])
    return seconds / (size / GIB) if size else None


def report(repo: Repository, config: Config | None, now: datetime, days: int) -> ProtectionReport:
    """What the report shows: status now, and the history of the last ``days`` days."""
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    since = now - timedelta(days=days)
    current = status_job(repo, config, now, DEFAULT_MAX_AGE_HOURS)
    index = repo.index

    snapshots = index.snapshots()  # oldest first
    logical_by_snapshot: dict[str, int] = {}
    versions: dict[str, list[tuple[str, str, str]]] = {}
    for v in index.all_versions():
        logical_by_snapshot[v.snapshot_id] = logical_by_snapshot.get(v.snapshot_id, 0) + v.size
        if _parse_time(v.created_at) >= since:
            versions.setdefault(v.volume_key, []).append((v.created_at, v.state, v.snapshot_id))

    # Pack bytes after each snapshot: today's, less what each later snapshot added (prune's removals are not
    # recorded per snapshot, so an earlier point can read low after a prune; the newest is exact).
    pack_bytes = current.storage.pack_bytes
    after: list[int] = []
    for snap in reversed(snapshots):
        after.append(max(pack_bytes, 0))
        pack_bytes -= int(snap.stats.get("pack_bytes_added", 0))
    after.reverse()
    growth: list[GrowthPoint] = []
    logical = 0
    for snap, size in zip(snapshots, after, strict=True):
        logical += logical_by_snapshot.get(snap.id, 0)
        if _parse_time(snap.created_at) >= since:
            growth.append(GrowthPoint(snap.created_at, snap.id, size, logical))

    runs = [
        RunRow(
            r["started_at"],
            _run_kind(r["level"]),
            r["level"],
            r["scope"],
            bool(r["ok"]),
            int(r["problems"]),
            float(r["duration_s"]),
            int(r["bytes_read"]),
            _seconds_per_gib(r),
        )
        for r in index.verify_runs(limit=VERIFY_RUNS_READ)
        if _parse_time(r["started_at"]) >= since
    ]
    return ProtectionReport(
        status=current,
        generated_at=now.astimezone(UTC).isoformat(timespec="seconds"),
        days=days,
        since=since.astimezone(UTC).isoformat(timespec="seconds"),
        versions=versions,
        growth=growth,
        runs=runs,
    )


class ReportUnwritable(Error):
    template = "cannot write the report to {path}: {detail}"
    hint = "check that the directory exists and is writable"
    code = "report_unwritable"


def write_report(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file in its directory, so a reader never sees half a page."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # to be published: readable, as umask allows
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ReportUnwritable(path=path, detail=exc.strerror or type(exc).__name__) from None


# --- HTML ------------------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Escaped for HTML text and attribute values (SVG inline in HTML included)."""
    return html.escape(str(value), quote=True)


def _when(text: str | None) -> str:
    return "-" if text is None else text[:16].replace("T", " ")


_ANCHORS: Final = ("start", "middle", "middle", "middle", "end")  # the outer date labels stay inside the chart


def _axis_times(start: datetime, end: datetime) -> list[datetime]:
    span = end - start
    return [start + span * i / 4 for i in range(5)]


def _line_chart(
    title: str,
    points: Sequence[tuple[str, float]],
    y_label: Callable[[float], str],
    start: datetime,
    end: datetime,
    colour: str = "#2f81f7",
) -> str:
    """An SVG line chart of (ISO time, value) points between ``start`` and ``end``."""
    w, h, left, right, top, bottom = CHART_WIDTH, CHART_HEIGHT, 90, 20, 16, 34
    plot_w, plot_h = w - left - right, h - top - bottom
    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{_e(title)}">']
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot"/>')
    if not points:
        parts.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle" class="empty">no data in this period</text>')
        return "".join(parts) + "</svg>"
    top_value = max(v for _t, v in points) * 1.1 or 1.0
    span_s = max((end - start).total_seconds(), 1.0)

    def x(at: datetime) -> float:
        return left + plot_w * min(max((at - start).total_seconds() / span_s, 0.0), 1.0)

    def y(value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    for i in range(5):
        value = top_value * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{_e(y_label(value))}</text>')
    for i, tick in enumerate(_axis_times(start, end)):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{h - 12}" text-anchor="{_ANCHORS[i]}">{_e(tick.strftime("%Y-%m-%d"))}</text>'
        )
    coords = [(x(_parse_time(t)), y(v), t, v) for t, v in points]
    if len(coords) > 1:
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy, _t, _v in coords)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
    for cx, cy, t, v in coords:
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{colour}"><title>{_e(_when(t))} UTC: '
            f"{_e(y_label(v))}</title></circle>"
        )
    return "".join(parts) + "</svg>"


def _timeline(rep: ProtectionReport, start: datetime, end: datetime) -> str:
    """One row per volume, one dot per version, coloured by its state."""
    volumes = [v for vs in rep.sites().values() for v in vs]
    row_h, label_w, top, bottom, right = 20, 280, 8, 30, 20
    w = CHART_WIDTH
    h = top + bottom + row_h * max(len(volumes), 1)
    plot_w = w - label_w - right
    span_s = max((end - start).total_seconds(), 1.0)
    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="versions">']
    if not volumes:
        parts.append(f'<text x="{w / 2}" y="{top + 14}" text-anchor="middle" class="empty">no volumes</text>')
    for row, v in enumerate(volumes):
        cy = top + row_h * row + row_h / 2
        label = v.name if len(v.name) <= 36 else v.name[:35] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{cy + 4:.1f}" text-anchor="end"><title>{_e(v.key)}</title>')
        parts.append(f"{_e(label)}</text>")
        parts.append(f'<line x1="{label_w}" x2="{w - right}" y1="{cy:.1f}" y2="{cy:.1f}" class="grid"/>')
        for at, state, sid in rep.versions.get(v.key, []):
            frac = min(max((_parse_time(at) - start).total_seconds() / span_s, 0.0), 1.0)
            colour = STATE_COLOURS.get(state, "#57606a")
            parts.append(
                f'<circle cx="{label_w + plot_w * frac:.1f}" cy="{cy:.1f}" r="5" fill="{colour}">'
                f"<title>{_e(v.name)}: {_e(state)} at {_e(_when(at))} UTC (snapshot {_e(sid[:12])})</title></circle>"
            )
    for i, tick in enumerate(_axis_times(start, end)):
        frac = (tick - start).total_seconds() / span_s
        parts.append(
            f'<text x="{label_w + plot_w * frac:.1f}" y="{h - 10}" text-anchor="{_ANCHORS[i]}">'
            f"{_e(tick.strftime('%Y-%m-%d'))}</text>"
        )
    return "".join(parts) + "</svg>"


def _legend(colours: dict[str, str]) -> str:
    items = "".join(f'<span><i style="background:{c}"></i>{_e(name)}</span>' for name, c in colours.items())
    return f'<p class="legend">{items}</p>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    """``rows`` hold HTML already escaped."""
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(text: str, colour: str) -> str:
    return f'<span class="badge" style="background:{colour}">{_e(text)}</span>'


def _ratio(value: float) -> str:
    return f"{value:.1f}×"


CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;margin:0;
background:#f6f8fa}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}
.meta{color:#57606a;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:22px}.card.bad b{color:#cf222e}.card.good b{color:#1a7f37}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.num,th.num{text-align:right}
.badge{color:#fff;border-radius:10px;padding:1px 8px;font-size:12px;white-space:nowrap}
ul.problems li{color:#cf222e}ul.warnings li{color:#9a6700}
.chart{background:#fff;border:1px solid #d0d7de;border-radius:6px;width:100%;height:auto}
.chart text{font-size:11px;fill:#57606a}.chart .grid{stroke:#eaeef2}.chart .plot{fill:#fff}
.empty{color:#57606a;font-style:italic}
.legend span{margin-right:14px;white-space:nowrap}.legend i{display:inline-block;width:10px;height:10px;
border-radius:5px;margin-right:4px}
"""


def render_html(rep: ProtectionReport) -> str:
    """The whole page: inline CSS and SVG, no script, no external resource."""
    data = rep.to_json()
    st = rep.status
    end = _parse_time(rep.generated_at)
    start = _parse_time(rep.since)
    protected = sum(s["protected"] for s in data["sites"])
    unprotected = sum(s["unprotected"] for s in data["sites"])
    last_verify = next((r for r in rep.runs if r.kind == "verify"), None)
    last_drill = next((r for r in rep.runs if r.kind == "drill"), None)

    def card(label: str, value: str, tone: str = "") -> str:
        return f'<div class="card {tone}"><span>{_e(label)}</span><b>{_e(value)}</b></div>'

    def run_value(run: RunRow | None) -> str:
        return "none" if run is None else f"{'ok' if run.ok else 'FAILED'} {_when(run.started_at)[:10]}"

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>AppStack protection report: {_e(st.repository)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        "<h1>AppStack protection report</h1>",
        f'<p class="meta">Repository {_e(st.repository)}; generated {_e(_when(rep.generated_at))} UTC; '
        f"history of the last {rep.days} days.</p>",
        '<section class="cards">',
        card("protected volumes", str(protected), "good" if protected else ""),
        card("unprotected volumes", str(unprotected), "bad" if unprotected else "good"),
        card("repository size", human_bytes(st.storage.pack_bytes)),
        card("deduplication", _ratio(st.storage.dedup_ratio)),
        card("last verify", run_value(last_verify), "" if last_verify is None or last_verify.ok else "bad"),
        card("last drill", run_value(last_drill), "" if last_drill is None or last_drill.ok else "bad"),
        "</section>",
        "<h2>Needs attention</h2>",
    ]
    if st.problems:
        out.append('<ul class="problems">' + "".join(f"<li>{_e(p)}</li>" for p in st.problems) + "</ul>")
    else:
        out.append('<p class="empty">No problems.</p>')
    if st.warnings:
        out.append('<ul class="warnings">' + "".join(f"<li>{_e(w)}</li>" for w in st.warnings) + "</ul>")

    out.append("<h2>Protection by site</h2>")
    out.append(_legend({c: CONDITION_COLOURS[c] for c in CONDITION_COLOURS}))
    for site in data["sites"]:
        out.append(
            f"<h3>Site {_e(site['site'] or '(none)')}: {site['protected']} protected, "
            f"{site['unprotected']} unprotected, {site['deleted']} deleted</h3>"
        )
        rows = [
            [
                _e(v["name"]) + f'<br><small title="{_e(v["key"])}">{_e(v["datastore"])}</small>',
                _badge(v["condition"], CONDITION_COLOURS.get(v["condition"], "#57606a")),
                _e(_when(v["last_good_at"])),
                _e(format_age(v["age_hours"])),
                _e(human_bytes(v["size"])),
                _e(v["reason"] or ""),
            ]
            for v in site["volumes"]
        ]
        out.append(_table(["volume", "condition", "last good capture (UTC)", "age", "size", "reason"], rows, ""))
    if not data["sites"]:
        out.append('<p class="empty">No volume captured yet.</p>')

    out.append("<h2>Repository growth</h2>")
    out.append("<h3>Pack bytes after each snapshot</h3>")
    out.append(_line_chart("pack bytes", [(g.at, g.pack_bytes) for g in rep.growth], human_bytes, start, end))
    out.append("<h3>Deduplication ratio (logical bytes / pack bytes)</h3>")
    out.append(_line_chart("dedup ratio", [(g.at, g.dedup_ratio) for g in rep.growth], _ratio, start, end, "#8250df"))

    out.append("<h2>Versions per volume</h2>")
    out.append(_legend(STATE_COLOURS))
    out.append(_timeline(rep, start, end))

    out.append("<h2>Verify and drill history</h2>")
    rows = [
        [
            _e(_when(r.started_at)),
            _e(r.kind),
            _e(r.level),
            _e(r.scope),
            _badge("ok", CONDITION_COLOURS["ok"]) if r.ok else _badge(f"{r.problems} problem(s)", "#cf222e"),
            _e(f"{r.duration_s:.1f} s"),
            _e(human_bytes(r.bytes_read)),
        ]
        for r in rep.runs
    ]
    out.append(
        _table(
            ["started (UTC)", "kind", "level", "scope", "result", "took", "read"],
            rows,
            "No verify or drill run in this period: schedule toolkit verify (toolkit schedule).",
        )
    )

    out.append("<h2>Recovery time</h2>")
    out.append("<h3>Drill restore seconds per GiB</h3>")
    drills = [(d["at"], float(d["seconds_per_gib"])) for d in data["recovery"]]
    out.append(_line_chart("seconds per GiB", drills, lambda v: f"{v:.1f} s/GiB", start, end, "#bc4c00"))
    if not drills:
        out.append('<p class="empty">No drill in this period: run toolkit verify --drill.</p>')
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"
