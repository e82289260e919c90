#!/usr/bin/env python3
"""The design benchmark behind the default chunk size and zstd level.

For every chunk size x zstd level, on a fresh repository, in this process
(the same code path as ``toolkit snapshot``: Repository, Ingester, PackWriter):

* first ingest of data set A: wall MiB/s and CPU seconds,
* stored size after A (pack bytes) and the share of all-zero chunks (holes),
* bytes added by B (A with 3 % of its 1 MiB blocks rewritten): dedup after an update,
* catalog size: catalog.db plus the stored manifests, after A and B,
* full restore of A (optional): MiB/s, including the toolkit's fsyncs.

``sync`` runs untimed before each timed step. Prints a markdown table and the
configuration the rule below picks; writes JSON.

Example:
  python benchmarks/chunk_size.py --volumes 4 --size-mib 512 --workdir /tmp/bench-chunks
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    MiB,
    find_generator,
    generate_a,
    generate_b,
    logical_bytes,
    md_table,
    median,
    rmtree,
    sync,
    tool_versions,
)

from catalog.repo import Repository
from catalog.types import TYPE_MANIFEST
from toolkit.ops.restore import restore
from toolkit.ops.snapshot import Source, snapshot
from toolkit.transports.local import LocalTransport

SIZES = {"64K": 64 << 10, "128K": 128 << 10, "256K": 256 << 10, "512K": 512 << 10, "1M": 1 << 20, "2M": 2 << 20}
SIZES |= {"4M": 4 << 20}


def _snapshot(repo: Repository, src: Path) -> tuple[float, float, dict[str, Any]]:
    """(wall s, CPU s, report JSON) of one snapshot of ``src`` recorded as datastore "cur"."""
    sync()
    t0, c0 = time.perf_counter(), os.times()
    with repo.writing("snapshot"):
        rep = snapshot(repo, [Source("cur", LocalTransport(src))])
    t1, c1 = time.perf_counter(), os.times()
    if not rep.ok:
        raise RuntimeError(f"snapshot of {src} failed: {rep.to_json()}")
    return t1 - t0, (c1.user - c0.user) + (c1.system - c0.system), rep.to_json()


def _catalog_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("catalog.db*"))


def _manifest_bytes(repo: Repository) -> int:
    row = repo.index.conn.execute(
        "SELECT coalesce(sum(stored_size), 0) FROM chunks WHERE type = ?", (TYPE_MANIFEST,)
    ).fetchone()
    return int(row[0])


def one_config(workdir: Path, a: Path, b: Path, chunk_size: int, level: int, *, do_restore: bool) -> dict[str, Any]:
    root = workdir / "repo"
    rmtree(root)
    size = logical_bytes(a)
    repo = Repository.init(root, chunk_size=chunk_size, zstd_level=level)
    try:
        wall_a, cpu_a, rep_a = _snapshot(repo, a)
        packs_a = repo.index.stored_totals()[0]
        r: dict[str, Any] = {
            "chunk_size": chunk_size,
            "level": level,
            "ingest_a_s": wall_a,
            "ingest_a_mib_s": size / MiB / wall_a,
            "ingest_a_cpu_s": cpu_a,
            "stored_a_bytes": packs_a,
            "holes_pct": 100 * rep_a["stats"]["holes"] / max(1, rep_a["stats"]["chunks"]),
            "chunks_a": rep_a["stats"]["chunks"],
        }
        wall_b, cpu_b, rep_b = _snapshot(repo, b)
        r |= {
            "ingest_b_s": wall_b,
            "ingest_b_cpu_s": cpu_b,
            "b_added_pack_bytes": repo.index.stored_totals()[0] - packs_a,
            "b_new_raw_bytes": rep_b["stats"]["new_raw_bytes"],
        }
        repo.index.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        r["catalog_db_bytes"] = _catalog_bytes(root)
        r["manifest_bytes"] = _manifest_bytes(repo)
        r["catalog_bytes"] = r["catalog_db_bytes"] + r["manifest_bytes"]
        if do_restore:
            target = workdir / "restore"
            rmtree(target)
            first = repo.index.snapshots()[0]
            sync()
            t0 = time.perf_counter()
            rr = restore(repo, first.created_at, LocalTransport(target))
            wall_r = time.perf_counter() - t0
            if not rr.ok:
                raise RuntimeError(f"restore failed: {rr.to_json()}")
            r |= {"restore_s": wall_r, "restore_mib_s": size / MiB / wall_r}
            rmtree(target)
    finally:
        repo.close()
        rmtree(root)
    return r


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median of the repeated runs of each configuration (sizes are deterministic)."""
    out: list[dict[str, Any]] = []
    keys = sorted({(r["chunk_size"], r["level"]) for r in rows})
    for cs, lvl in keys:
        mine = [r for r in rows if (r["chunk_size"], r["level"]) == (cs, lvl)]
        agg: dict[str, Any] = {"chunk_size": cs, "level": lvl, "n": len(mine)}
        for k in mine[0]:
            if k in ("chunk_size", "level"):
                continue
            vals = [float(r[k]) for r in mine if k in r]
            agg[k] = median(vals)
            if k.endswith("_mib_s") or k.endswith("_s"):
                agg[k + "_range"] = [min(vals), max(vals)]
        out.append(agg)
    return out


def pick(configs: list[dict[str, Any]], size_slack: float, added_slack: float) -> dict[str, Any]:
    """The fastest first ingest among configurations that are nearly the smallest after A and after B."""
    best_a = min(c["stored_a_bytes"] for c in configs)
    best_b = min(c["b_added_pack_bytes"] for c in configs)
    ok = [
        c
        for c in configs
        if c["stored_a_bytes"] <= best_a * (1 + size_slack) and c["b_added_pack_bytes"] <= best_b * (1 + added_slack)
    ]
    pool = ok or configs
    return max(pool, key=lambda c: c["ingest_a_mib_s"])


def label(cs: int) -> str:
    return f"{cs >> 20}M" if cs >= MiB else f"{cs >> 10}K"


def table(configs: list[dict[str, Any]], chosen: dict[str, Any]) -> str:
    rows = []
    for c in configs:
        restore = f"{c['restore_mib_s']:.0f}" if "restore_mib_s" in c else "-"
        mark = " **(picked)**" if c is chosen else ""
        rows.append(
            [
                f"{label(c['chunk_size'])} / zstd-{c['level']}{mark}",
                c["n"],
                f"{c['ingest_a_mib_s']:.0f}",
                f"{c['ingest_a_cpu_s']:.1f}",
                f"{c['stored_a_bytes'] / MiB:.1f}",
                f"{c['holes_pct']:.1f}",
                f"{c['b_added_pack_bytes'] / MiB:.1f}",
                f"{c['ingest_b_s']:.2f}",
                f"{c['catalog_db_bytes'] / 1024:.0f}",
                f"{c['manifest_bytes'] / 1024:.0f}",
                restore,
            ]
        )
    headers = [
        "chunk / level",
        "n",
        "ingest A MiB/s",
        "CPU A s",
        "stored after A MiB",
        "zero chunks %",
        "B added MiB",
        "ingest B s",
        "catalog.db KiB",
        "manifests KiB",
        "restore MiB/s",
    ]
    return md_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--sizes", default="64K,128K,256K,512K,1M,2M,4M")
    ap.add_argument("--levels", default="1,2,3,6")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-restore", dest="restore", action="store_false", help="skip the restore measurement")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "bench-chunks"))
    ap.add_argument("--json-out", help="results file (default WORKDIR/chunk_size.json)")
    ap.add_argument("--reuse-data", action="store_true")
    ap.add_argument("--size-slack", type=float, default=0.05, help="allowed excess over the smallest size after A")
    ap.add_argument("--added-slack", type=float, default=0.25, help="allowed excess over the smallest B added")
    args = ap.parse_args(argv)
    try:
        sizes = [SIZES[s.strip().upper()] for s in args.sizes.split(",")]
    except KeyError as exc:
        ap.error(f"unknown chunk size {exc}; choose from {', '.join(SIZES)}")
    levels = [int(x) for x in args.levels.split(",")]
    find_generator()
    os.environ.pop("TOOLKIT_PACK_MAX_BYTES", None)  # the default pack size, as a user gets it
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"generating data set A ({args.volumes} x {args.size_mib} MiB) and B ...", file=sys.stderr)
    a = generate_a(workdir / "A", args.volumes, args.size_mib, reuse=args.reuse_data)
    b = generate_b(a, workdir / "B", reuse=args.reuse_data)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for run in range(args.runs):
        for cs in sizes:
            for lvl in levels:
                r = one_config(workdir, a, b, cs, lvl, do_restore=args.restore) | {"run": run + 1}
                rows.append(r)
                print(
                    f"run {run + 1}: {label(cs)} zstd-{lvl}: A {r['ingest_a_mib_s']:.0f} MiB/s, "
                    f"stored {r['stored_a_bytes'] / MiB:.0f} MiB, B added {r['b_added_pack_bytes'] / MiB:.1f} MiB",
                    file=sys.stderr,
                )
    configs = aggregate(rows)
    chosen = pick(configs, args.size_slack, args.added_slack)
    results = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "versions": tool_versions(),
        "data": {"volumes": args.volumes, "size_mib": args.size_mib, "logical_bytes": logical_bytes(a)},
        "seconds": time.perf_counter() - started,
        "runs": rows,
        "configs": configs,
        "picked": {"chunk_size": chosen["chunk_size"], "level": chosen["level"]},
        "rule": {"size_slack": args.size_slack, "added_slack": args.added_slack},
    }
    out = Path(args.json_out) if args.json_out else workdir / "chunk_size.json"
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    text = (
        f"# chunk size x zstd level ({args.volumes} x {args.size_mib} MiB, n = {args.runs}, medians)\n\n"
        + table(configs, chosen)
        + f"\n\nPicked: {label(chosen['chunk_size'])} / zstd-{chosen['level']} — the fastest first ingest "
        f"among configurations within {args.size_slack:.0%} of the smallest stored size after A and "
        f"within {args.added_slack:.0%} of the smallest B added.\n"
    )
    (workdir / "chunk_size.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
