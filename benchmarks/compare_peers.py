#!/usr/bin/env python3
"""The toolkit against restic and borg on the same AppStack data, in the same run.

Modes (``--modes``, comma separated, default all three):

* ``peers``: data set A (``--volumes`` x ``--size-mib``) and B (3 % of 1 MiB blocks
  rewritten) from gen_appstacks.py. For each tool, on a fresh repository and
  always the same directory ``WORKDIR/cur`` (A, then B renamed into place):
  backup A (wall, peak RSS, CPU, repo size), backup B (wall, bytes added), backup
  B again (no change), full restore of snapshot 1 (checked with ``cmp``; for the
  toolkit also that zero chunks stayed holes), then the full data check.
  Before every timed step the data it reads is read once untimed (warm page
  cache, as in the anchors), ``sync`` runs and the script waits until the
  machine is quiet (no disk I/O in flight, CPU under 10 % busy for 1 s); after
  each restore a ``sync`` is timed on its own, so "restore" and "restore + sync"
  are both reported.
* ``many``: 100 small volumes (``--many-volumes`` x ``--many-size-mib``): the
  time of a no-change backup for each tool.
* ``sparse``: one volume with a 20 GiB sparse flat file holding a few MiB of
  random data: the toolkit's snapshot, restore and verify, with peak RSS.
* ``restore``: data set A backed up once per tool, then ``--restore-runs`` full
  restores per tool, the tools taking turns (warm repository, ``sync`` before,
  the ``sync`` after timed on its own, every restore compared with ``cmp``):
  more restore samples in less time than ``peers``, for tuning the restore path.

Tools: ``toolkit``, ``toolkit-readback`` (the toolkit restoring with
``--verify-landed readback``), ``toolkit-baseline`` (the checkout given with
``--baseline DIR``: before and after a change in one invocation), ``restic``,
``borg-zstd3``, ``borg-lz4``.

Prints markdown tables (absolute figures, ratios toolkit vs each peer, the
project's targets) and writes every measurement as JSON.

Example:
  python benchmarks/compare_peers.py --volumes 8 --size-mib 512 --runs 1 --workdir /tmp/bench-peers
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    REPO_ROOT,
    MiB,
    StepFailed,
    allocated_bytes,
    du_bytes,
    find_generator,
    generate_a,
    generate_b,
    logical_bytes,
    md_table,
    median,
    mem_free_mib,
    rmtree,
    run_measured,
    spread,
    sync,
    timed_sync,
    tool_versions,
    warm,
)

PASSWORD = "benchmark"  # noqa: S105 (restic needs one; the repositories are thrown away)


# ---------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------


@dataclass
class Tool:
    """How one backup program is driven. Commands run with ``cwd`` = the work directory."""

    name: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    def environ(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLKIT_", "RESTIC_", "BORG_"))}
        return base | self.env

    def init(self, repo: Path) -> list[str]:
        raise NotImplementedError

    def backup(self, repo: Path, source: Path, n: int) -> list[str]:
        raise NotImplementedError

    def restore(self, repo: Path, n: int, target: Path) -> tuple[list[str], Path]:
        """The restore command of backup number ``n`` (1-based) and where the source dir lands."""
        raise NotImplementedError

    def check(self, repo: Path) -> list[str]:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Drop caches the tool keeps outside its repository."""


class Toolkit(Tool):
    def __init__(
        self, workdir: Path, chunk_size: str | None = None, *, root: Path = REPO_ROOT, name: str = "toolkit"
    ) -> None:
        pythonpath = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
        super().__init__(name, workdir, {"PYTHONPATH": pythonpath})
        self.chunk_size = chunk_size
        # An installed toolkit starts from bytecode (pip compiles it at install); a checkout run with
        # PYTHONDONTWRITEBYTECODE would compile every module at every start (about 0.1 s here).
        for package in ("toolkit", "catalog"):
            compileall.compile_dir(root / package, quiet=1)

    def _cli(self, repo: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "toolkit", "--repo", str(repo), *args]

    def init(self, repo: Path) -> list[str]:
        extra = ["--chunk-size", self.chunk_size] if self.chunk_size else []
        return self._cli(repo, "-q", "init", *extra)

    def backup(self, repo: Path, source: Path, n: int) -> list[str]:
        return self._cli(repo, "-q", "--json", "snapshot", str(source))

    def snapshot_ids(self, repo: Path) -> list[str]:
        out = subprocess.run(
            self._cli(repo, "--json", "snapshots"), env=self.environ(), capture_output=True, text=True, check=True
        ).stdout
        return [s["id"] for s in json.loads(out)["snapshots"]]

    def restore(self, repo: Path, n: int, target: Path) -> tuple[list[str], Path]:
        snap = self.snapshot_ids(repo)[n - 1]
        return self._cli(repo, "-q", "restore", "--as-of", snap, "--to", str(target)), target

    def check(self, repo: Path) -> list[str]:
        return self._cli(repo, "-q", "verify", "--read-data")


class ToolkitReadback(Toolkit):
    """The toolkit restoring with ``--verify-landed readback`` (every file read back from the disk)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.name = "toolkit readback"

    def restore(self, repo: Path, n: int, target: Path) -> tuple[list[str], Path]:
        cmd, landed = super().restore(repo, n, target)
        return [*cmd, "--verify-landed", "readback"], landed


class Restic(Tool):
    def __init__(self, workdir: Path) -> None:
        cache = workdir / "cache-restic"
        super().__init__("restic", workdir, {"RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(cache)})
        self.cache = cache

    def init(self, repo: Path) -> list[str]:
        return ["restic", "-r", str(repo), "init", "-q"]

    def backup(self, repo: Path, source: Path, n: int) -> list[str]:
        return ["restic", "-r", str(repo), "backup", "-q", source.name]

    def restore(self, repo: Path, n: int, target: Path) -> tuple[list[str], Path]:
        out = subprocess.run(
            ["restic", "-r", str(repo), "snapshots", "--json"],
            env=self.environ(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        snaps = sorted(json.loads(out), key=lambda s: s["time"])
        landed = target / "cur"  # restic 0.14 drops the common prefix of the snapshot's paths
        return ["restic", "-r", str(repo), "restore", snaps[n - 1]["id"], "--target", str(target), "-q"], landed

    def check(self, repo: Path) -> list[str]:
        return ["restic", "-r", str(repo), "check", "--read-data", "-q"]

    def cleanup(self) -> None:
        rmtree(self.cache)


class Borg(Tool):
    def __init__(self, workdir: Path, compression: str) -> None:
        home = workdir / f"home-borg-{compression.replace(',', '')}"
        env = {
            "BORG_BASE_DIR": str(home),
            "BORG_PASSPHRASE": "",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }
        super().__init__(f"borg {compression}", workdir, env)
        self.compression = compression
        self.home = home

    def init(self, repo: Path) -> list[str]:
        return ["borg", "init", "-e", "none", str(repo)]

    def backup(self, repo: Path, source: Path, n: int) -> list[str]:
        return ["borg", "create", "--compression", self.compression, f"{repo}::s{n}", source.name]

    def restore(self, repo: Path, n: int, target: Path) -> tuple[list[str], Path]:
        target.mkdir(parents=True, exist_ok=True)
        # borg extracts into the current directory; run it from the target through `sh -c cd`.
        return ["sh", "-c", 'cd "$1" && exec borg extract "$2"', "sh", str(target), f"{repo}::s{n}"], target / "cur"

    def check(self, repo: Path) -> list[str]:
        return ["borg", "check", "--verify-data", str(repo)]

    def cleanup(self) -> None:
        rmtree(self.home)


def make_tools(names: list[str], workdir: Path, baseline: Path | None = None) -> list[Tool]:
    factories: dict[str, Callable[[], Tool]] = {
        "toolkit": lambda: Toolkit(workdir),
        "toolkit-readback": lambda: ToolkitReadback(workdir),
        "toolkit-baseline": lambda: Toolkit(workdir, root=baseline or REPO_ROOT, name="toolkit baseline"),
        "restic": lambda: Restic(workdir),
        "borg-zstd3": lambda: Borg(workdir, "zstd,3"),
        "borg-lz4": lambda: Borg(workdir, "lz4"),
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise SystemExit(f"error: unknown tool(s) {', '.join(unknown)}; choose from {', '.join(factories)}")
    if "toolkit-baseline" in names and baseline is None:
        raise SystemExit("error: toolkit-baseline needs --baseline DIR (another checkout of this repository)")
    missing = [n for n in names if not n.startswith("toolkit") and shutil.which(n.split("-")[0]) is None]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not installed (Debian packages restic, borgbackup)")
    return [factories[n]() for n in names]


# ---------------------------------------------------------------------------
# data placement: WORKDIR/cur holds A or B, the other sits under its own name
# ---------------------------------------------------------------------------


class Datasets:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cur = workdir / "cur"

    def holding(self) -> str | None:
        try:
            mode = json.loads((self.cur / "manifest.json").read_text())["mode"]
        except (OSError, ValueError, KeyError):
            return None
        return "A" if mode == "generate" else "B"

    def path(self, which: str) -> Path:
        """Where data set ``which`` is now (``cur`` or its own name)."""
        return self.cur if self.holding() == which else self.workdir / which

    def place(self, which: str) -> Path:
        held = self.holding()
        if held == which:
            return self.cur
        if held is not None:
            self.cur.rename(self.workdir / held)
        (self.workdir / which).rename(self.cur)
        return self.cur


# ---------------------------------------------------------------------------
# the peers sequence
# ---------------------------------------------------------------------------


def compare_trees(expected: Path, got: Path) -> list[str]:
    """Names of .vmdk files of ``expected`` that ``got`` lacks or holds different bytes for."""
    bad = []
    for f in sorted(expected.iterdir()):
        if not f.name.endswith(".vmdk"):
            continue
        other = got / f.name
        r = subprocess.run(["cmp", "-s", str(f), str(other)], check=False)
        if r.returncode != 0:
            bad.append(f.name)
    return bad


def run_sequence(tool: Tool, data: Datasets, run_dir: Path, logs: Path) -> dict[str, Any]:
    """init, backup A, backup B, backup B again, restore 1, check: one fresh repository."""
    repo = run_dir / f"repo-{tool.name.replace(' ', '-').replace(',', '')}"
    target = run_dir / f"restore-{tool.name.replace(' ', '-').replace(',', '')}"
    rmtree(repo)
    rmtree(target)
    tool.cleanup()
    log = logs / f"{repo.name}.log"
    env = tool.environ()
    wd = tool.workdir

    def step(cmd: list[str], cwd: Path | None = None, *, warmed: Path | None = None) -> Any:
        if warmed is not None:
            warm(warmed)
        r.setdefault("settle_s", []).append(round(sync(), 2))  # the previous step's leftovers done first
        r.setdefault("load1", []).append(round(os.getloadavg()[0], 2))  # others' work on a shared machine
        r.setdefault("mem_free_mib", []).append(mem_free_mib())  # little free memory: each new page costs a reclaim
        return run_measured(cmd, cwd=cwd or wd, env=env, log=log)

    r: dict[str, Any] = {"tool": tool.name}
    run_measured(tool.init(repo), cwd=wd, env=env, log=log)
    base = du_bytes(repo)

    src = data.place("A")
    m = step(tool.backup(repo, src, 1), warmed=src)
    r |= {"backup_a_s": m.wall_s, "backup_a_rss_mib": m.rss_mib, "backup_a_cpu_s": m.cpu_s, "backup_a_sys_s": m.sys_s}
    r["repo_a_bytes"] = du_bytes(repo) - base
    after_a = du_bytes(repo)

    src = data.place("B")
    m = step(tool.backup(repo, src, 2), warmed=src)
    r |= {"backup_b_s": m.wall_s, "backup_b_rss_mib": m.rss_mib, "backup_b_cpu_s": m.cpu_s}
    after_b = du_bytes(repo)
    r["b_added_bytes"] = after_b - after_a

    m = step(tool.backup(repo, src, 3), warmed=src)
    r |= {"nochange_s": m.wall_s, "nochange_rss_mib": m.rss_mib, "nochange_added_bytes": du_bytes(repo) - after_b}

    cmd, landed = tool.restore(repo, 1, target)
    m = step(cmd, warmed=repo)
    r |= {"restore_s": m.wall_s, "restore_rss_mib": m.rss_mib, "restore_cpu_s": m.cpu_s}
    r["restore_sync_s"] = timed_sync()
    r["restore_plus_sync_s"] = r["restore_s"] + r["restore_sync_s"]
    a_dir = data.path("A")
    if not landed.is_dir():  # other versions keep the absolute path under the target
        landed = next((p for p in target.rglob("cur") if p.is_dir()), landed)
    flats = sorted(p for p in landed.iterdir() if p.name.endswith("-flat.vmdk")) if landed.is_dir() else []
    r["restore_logical_bytes"] = sum(p.stat().st_size for p in flats)
    r["restore_allocated_bytes"] = sum(allocated_bytes(p) for p in flats)
    r["restore_sparse"] = bool(flats) and all(allocated_bytes(p) < p.stat().st_size for p in flats)
    r["restore_mismatches"] = compare_trees(a_dir, landed)
    r["restore_ok"] = not r["restore_mismatches"] and bool(flats)
    rmtree(target)

    m = step(tool.check(repo), warmed=repo)
    r |= {"check_s": m.wall_s, "check_rss_mib": m.rss_mib, "check_cpu_s": m.cpu_s}
    r["peak_rss_mib"] = max(r[k] for k in r if k.endswith("_rss_mib"))
    rmtree(repo)
    tool.cleanup()
    return r


def peers_mode(args: argparse.Namespace, workdir: Path, logs: Path, results: dict[str, Any]) -> None:
    data = Datasets(workdir)
    print(f"generating data set A ({args.volumes} x {args.size_mib} MiB) and B ...", file=sys.stderr)
    held = data.holding()
    if held is not None:  # a previous invocation left A or B in cur
        data.cur.rename(workdir / held)
    a = generate_a(workdir / "A", args.volumes, args.size_mib, reuse=args.reuse_data)
    generate_b(a, workdir / "B", reuse=args.reuse_data)
    size = logical_bytes(a)
    results["data"] = {"volumes": args.volumes, "size_mib": args.size_mib, "logical_bytes": size}
    if args.calibrate and shutil.which("zstd"):
        # A machine-speed marker comparable with the anchors (zstd -3 -T0 over A's flat files).
        sync()
        flats = " ".join(f"'{p}'" for p in sorted(a.glob("*-flat.vmdk")))
        m = run_measured(["sh", "-c", f"cat {flats} | zstd -3 -T0 -q -c > /dev/null"])
        results["calibration_zstd3_s"] = m.wall_s
        print(f"calibration: cat A | zstd -3 -T0: {m.wall_s:.2f} s", file=sys.stderr)
    tools = make_tools(args.tools.split(","), workdir, args.baseline)
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        k = i % len(tools)
        for tool in tools[k:] + tools[:k]:  # rotate the order so drift does not favour one tool
            print(f"run {i + 1}/{args.runs}: {tool.name} ...", file=sys.stderr)
            r = run_sequence(tool, data, workdir, logs)
            r["run"] = i + 1
            runs.append(r)
            print(
                f"  A {r['backup_a_s']:.2f} s, B {r['backup_b_s']:.2f} s, no-change {r['nochange_s']:.2f} s, "
                f"restore {r['restore_s']:.2f} s (+sync {r['restore_sync_s']:.2f}), check {r['check_s']:.2f} s, "
                f"restore ok={r['restore_ok']}",
                file=sys.stderr,
            )
            save(results | {"peer_runs": runs}, args)
    data.place("A")
    results["peer_runs"] = runs
    results["peers"] = summarize(runs, size)


SUMMARY_KEYS = (
    "backup_a_s",
    "backup_a_rss_mib",
    "backup_a_cpu_s",
    "repo_a_bytes",
    "backup_b_s",
    "b_added_bytes",
    "nochange_s",
    "nochange_added_bytes",
    "restore_s",
    "restore_sync_s",
    "restore_plus_sync_s",
    "restore_rss_mib",
    "restore_allocated_bytes",
    "check_s",
    "check_rss_mib",
    "peak_rss_mib",
)


def summarize(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["tool"] for r in runs):
        mine = [r for r in runs if r["tool"] == name]
        s: dict[str, Any] = {"n": len(mine), "restore_ok": all(r["restore_ok"] for r in mine)}
        s["restore_sparse"] = all(r["restore_sparse"] for r in mine)
        for key in SUMMARY_KEYS:
            vals = [float(r[key]) for r in mine]
            s[key] = {"median": median(vals), "min": min(vals), "max": max(vals), "values": vals}
        s["backup_a_mib_s"] = size / MiB / s["backup_a_s"]["median"]
        s["restore_mib_s"] = size / MiB / s["restore_s"]["median"]
        out[name] = s
    return out


# ---------------------------------------------------------------------------
# restores only: one backup of A per tool, then restores taking turns
# ---------------------------------------------------------------------------


def restore_mode(args: argparse.Namespace, workdir: Path, logs: Path, results: dict[str, Any]) -> None:
    data = Datasets(workdir)
    held = data.holding()
    if held is not None:
        data.cur.rename(workdir / held)
    a = generate_a(workdir / "A", args.volumes, args.size_mib, reuse=args.reuse_data)
    size = logical_bytes(a)
    src = data.place("A")
    tools = make_tools(args.tools.split(","), workdir, args.baseline)
    repos: dict[str, Path] = {}
    for tool in tools:
        slug = tool.name.replace(" ", "-").replace(",", "")
        repo = workdir / f"repo-restore-{slug}"
        rmtree(repo)
        tool.cleanup()
        env, log = tool.environ(), logs / f"{repo.name}.log"
        run_measured(tool.init(repo), cwd=workdir, env=env, log=log)
        print(f"restore mode: backing up A with {tool.name} ...", file=sys.stderr)
        warm(src)
        sync()
        run_measured(tool.backup(repo, src, 1), cwd=workdir, env=env, log=log)
        repos[tool.name] = repo
    runs: list[dict[str, Any]] = []
    for i in range(args.restore_runs):
        k = i % len(tools)
        for tool in tools[k:] + tools[:k]:
            repo = repos[tool.name]
            target = workdir / f"restore-{tool.name.replace(' ', '-').replace(',', '')}"
            rmtree(target)
            env, log = tool.environ(), logs / f"{repo.name}.log"
            cmd, landed = tool.restore(repo, 1, target)
            warm(repo)
            sync()
            load = round(os.getloadavg()[0], 2)
            m = run_measured(cmd, cwd=workdir, env=env, log=log)
            r: dict[str, Any] = {"tool": tool.name, "run": i + 1, "load1": load}
            r |= {"restore_s": m.wall_s, "restore_cpu_s": m.cpu_s, "restore_rss_mib": m.rss_mib}
            r["restore_sync_s"] = timed_sync()
            r["restore_plus_sync_s"] = r["restore_s"] + r["restore_sync_s"]
            if not landed.is_dir():
                landed = next((p for p in target.rglob("cur") if p.is_dir()), landed)
            flats = sorted(p for p in landed.iterdir() if p.name.endswith("-flat.vmdk")) if landed.is_dir() else []
            r["restore_allocated_bytes"] = sum(allocated_bytes(p) for p in flats)
            r["restore_ok"] = bool(flats) and not compare_trees(src, landed)
            rmtree(target)
            runs.append(r)
            print(
                f"run {i + 1}/{args.restore_runs}: {tool.name} restore {r['restore_s']:.2f} s "
                f"(+sync {r['restore_sync_s']:.2f}), CPU {r['restore_cpu_s']:.1f} s, load {load}, "
                f"ok={r['restore_ok']}",
                file=sys.stderr,
            )
            save(results | {"restore_runs": runs}, args)
    for tool in tools:
        rmtree(repos[tool.name])
        tool.cleanup()
    out: dict[str, Any] = {"logical_bytes": size, "runs": runs, "tools": {}}
    for tool in tools:
        mine = [r for r in runs if r["tool"] == tool.name]
        s: dict[str, Any] = {"n": len(mine), "restore_ok": all(r["restore_ok"] for r in mine)}
        for key in ("restore_s", "restore_plus_sync_s", "restore_cpu_s", "restore_rss_mib", "restore_allocated_bytes"):
            vals = [float(r[key]) for r in mine]
            s[key] = {"median": median(vals), "min": min(vals), "max": max(vals), "values": vals}
        out["tools"][tool.name] = s
    results["restore"] = out


def restore_tables(res: dict[str, Any]) -> str:
    tools = res["tools"]
    size = res["logical_bytes"]
    rows = [
        [
            name,
            s["n"],
            f"{spread(s['restore_s']['values'])} ({size / MiB / s['restore_s']['median']:.0f})",
            spread(s["restore_plus_sync_s"]["values"]),
            f"{s['restore_cpu_s']['median']:.1f}",
            f"{s['restore_rss_mib']['median']:.0f}",
            _mib(s["restore_allocated_bytes"]["median"]),
            "ok" if s["restore_ok"] else "MISMATCH",
        ]
        for name, s in tools.items()
    ]
    headers = ["tool", "n", "restore s (MiB/s)", "restore + sync s", "CPU s", "RSS MiB", "allocated MiB", "cmp"]
    text = md_table(headers, rows)
    peers = [n for n in tools if not n.startswith("toolkit")]
    mine = [n for n in tools if n.startswith("toolkit")]
    if peers and mine:
        ratio_rows = []
        for n in mine:
            for key, label in (("restore_s", "as run"), ("restore_plus_sync_s", "both + sync")):
                ratio_rows.append(
                    [
                        f"{n}, {label}",
                        *[f"{tools[p][key]['median'] / tools[n][key]['median']:.2f}x" for p in peers],
                    ]
                )
        text += "\n\nRestore speed ratios (medians; >1 = toolkit faster):\n\n"
        text += md_table(["toolkit", *[f"vs {p}" for p in peers]], ratio_rows)
    return text


# ---------------------------------------------------------------------------
# 100 volumes, no change
# ---------------------------------------------------------------------------


def many_mode(args: argparse.Namespace, workdir: Path, logs: Path, results: dict[str, Any]) -> None:
    src = workdir / "many"
    print(f"generating {args.many_volumes} x {args.many_size_mib} MiB volumes ...", file=sys.stderr)
    generate_a(src, args.many_volumes, args.many_size_mib, seed="3", reuse=args.reuse_data)
    out: dict[str, Any] = {"volumes": args.many_volumes, "size_mib": args.many_size_mib, "tools": {}}
    for tool in make_tools(args.tools.split(","), workdir, args.baseline):
        repo = workdir / f"repo-many-{tool.name.replace(' ', '-').replace(',', '')}"
        rmtree(repo)
        tool.cleanup()
        env, log = tool.environ(), logs / f"{repo.name}.log"
        run_measured(tool.init(repo), cwd=workdir, env=env, log=log)
        warm(src)
        sync()
        first = run_measured(tool.backup(repo, src, 1), cwd=workdir, env=env, log=log)
        walls, inner, rss = [], [], []
        for n in range(args.many_repeats):
            sync()
            m = run_measured(tool.backup(repo, src, n + 2), cwd=workdir, env=env, log=log)
            walls.append(m.wall_s)
            rss.append(m.rss_mib)
            if isinstance(tool, Toolkit):
                inner.append(float(json.loads(m.stdout)["duration_s"]))
        res: dict[str, Any] = {
            "first_s": first.wall_s,
            "nochange_s": {"median": median(walls), "min": min(walls), "max": max(walls), "values": walls},
            "nochange_rss_mib": median(rss),
        }
        if inner:
            res["nochange_job_s"] = {"median": median(inner), "values": inner}
        out["tools"][tool.name] = res
        print(f"  {tool.name}: no-change {spread(walls)} s", file=sys.stderr)
        rmtree(repo)
        tool.cleanup()
    results["many"] = out


# ---------------------------------------------------------------------------
# one 20 GiB sparse volume: peak RSS of the toolkit
# ---------------------------------------------------------------------------

DESCRIPTOR = """# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=1a2b3c4d
parentCID=ffffffff
createType="vmfs"

# Extent description
RW {sectors} VMFS "{name}-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.thinProvisioned = "1"
ddb.virtualHWVersion = "14"
"""


def make_sparse_volume(src: Path, size_gib: int, data_mib: int, pieces: int = 40) -> int:
    """A descriptor and a sparse -flat file of ``size_gib`` GiB with ``data_mib`` MiB of random bytes spread out."""
    rmtree(src)
    src.mkdir(parents=True)
    name = "BigStack_00"
    size = size_gib << 30
    (src / f"{name}.vmdk").write_text(DESCRIPTOR.format(sectors=size // 512, name=name))
    rng = random.Random(20)
    piece = data_mib * MiB // pieces
    stride = size // pieces
    with (src / f"{name}-flat.vmdk").open("wb") as f:
        f.truncate(size)
        for i in range(pieces):
            # Unaligned offsets: some pieces straddle two chunks.
            f.seek(i * stride + rng.randrange(0, stride - piece, 4096))
            f.write(rng.randbytes(piece))
    return size


def sparse_mode(args: argparse.Namespace, workdir: Path, logs: Path, results: dict[str, Any]) -> None:
    src = workdir / "sparse"
    size = make_sparse_volume(src, args.sparse_gib, args.sparse_data_mib)
    flat = next(src.glob("*-flat.vmdk"))
    tool = Toolkit(workdir)
    repo, target = workdir / "repo-sparse", workdir / "restore-sparse"
    rmtree(repo)
    rmtree(target)
    env, log = tool.environ(), logs / "repo-sparse.log"
    run_measured(tool.init(repo), cwd=workdir, env=env, log=log)
    res: dict[str, Any] = {"size_bytes": size, "data_bytes": allocated_bytes(flat)}
    print(f"sparse {args.sparse_gib} GiB: snapshot ...", file=sys.stderr)
    sync()
    m = run_measured(tool.backup(repo, src, 1), cwd=workdir, env=env, log=log)
    res |= {"snapshot_s": m.wall_s, "snapshot_rss_mib": m.rss_mib, "snapshot_cpu_s": m.cpu_s}
    res["repo_bytes"] = du_bytes(repo)
    cmd, landed = tool.restore(repo, 1, target)
    sync()
    m = run_measured(cmd, cwd=workdir, env=env, log=log)
    res |= {"restore_s": m.wall_s, "restore_rss_mib": m.rss_mib, "restore_cpu_s": m.cpu_s}
    out = landed / flat.name
    res["restore_allocated_bytes"] = allocated_bytes(out)
    res["restore_sparse"] = allocated_bytes(out) < size
    print("  comparing (cmp over 20 GiB of mostly holes) ...", file=sys.stderr)
    res["restore_ok"] = not compare_trees(src, landed)
    sync()
    m = run_measured(tool.check(repo), cwd=workdir, env=env, log=log)
    res |= {"verify_s": m.wall_s, "verify_rss_mib": m.rss_mib}
    res["peak_rss_mib"] = max(res["snapshot_rss_mib"], res["restore_rss_mib"], res["verify_rss_mib"])
    results["sparse"] = res
    rmtree(target)
    rmtree(repo)
    rmtree(src)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def _mib(b: float) -> str:
    return f"{b / MiB:.1f}"


def peers_tables(results: dict[str, Any]) -> str:
    peers = results["peers"]
    size = results["data"]["logical_bytes"]
    rows = []
    for name, s in peers.items():

        def sp(key: str, scale: float = 1.0, digits: int = 2, s: dict[str, Any] = s) -> str:
            return spread([v / scale for v in s[key]["values"]], digits)

        rows.append(
            [
                name,
                s["n"],
                f"{sp('backup_a_s')} ({size / MiB / s['backup_a_s']['median']:.0f})",
                f"{s['backup_a_rss_mib']['median']:.0f}",
                f"{s['backup_a_cpu_s']['median']:.1f}",
                _mib(s["repo_a_bytes"]["median"]),
                sp("backup_b_s"),
                _mib(s["b_added_bytes"]["median"]),
                sp("nochange_s"),
                f"{sp('restore_s')} ({size / MiB / s['restore_s']['median']:.0f})",
                sp("restore_plus_sync_s"),
                _mib(s["restore_allocated_bytes"]["median"]),
                "ok" if s["restore_ok"] else "MISMATCH",
                sp("check_s"),
                f"{s['peak_rss_mib']['median']:.0f}",
            ]
        )
    headers = [
        "tool",
        "n",
        "backup A s (MiB/s)",
        "RSS A MiB",
        "CPU A s",
        "repo after A MiB",
        "backup B s",
        "B added MiB",
        "no-change s",
        "restore s (MiB/s)",
        "restore + sync s",
        "restore allocated MiB",
        "cmp",
        "check s",
        "peak RSS MiB",
    ]
    text = md_table(headers, rows)
    ratios = ratio_rows(peers)
    if ratios:
        others = [n for n in peers if n != "toolkit"]
        text += (
            "\n\nRatios, toolkit vs each peer (medians; speed: >1 = toolkit faster; size: <1 = toolkit smaller):\n\n"
        )
        text += md_table(["metric", *[f"vs {n}" for n in others]], ratios)
    return text


RATIOS: tuple[tuple[str, str, str], ...] = (
    ("backup A speed", "backup_a_s", "speed"),
    ("repo size after A", "repo_a_bytes", "size"),
    ("backup B speed", "backup_b_s", "speed"),
    ("bytes added by B", "b_added_bytes", "size"),
    ("no-change speed", "nochange_s", "speed"),
    ("restore speed (as run: toolkit fsyncs, peers do not)", "restore_s", "speed"),
    ("restore + final sync speed", "restore_plus_sync_s", "speed"),
    ("check / verify --read-data speed", "check_s", "speed"),
    ("peak RSS", "peak_rss_mib", "size"),
)


def ratio(peers: dict[str, Any], key: str, kind: str, other: str) -> float:
    mine, theirs = peers["toolkit"][key]["median"], peers[other][key]["median"]
    if kind == "speed":
        return float(theirs / mine) if mine else float("inf")
    return float(mine / theirs) if theirs else float("inf")


def ratio_rows(peers: dict[str, Any]) -> list[list[str]]:
    if "toolkit" not in peers:
        return []
    others = [n for n in peers if n != "toolkit"]
    return [[label, *[f"{ratio(peers, key, kind, o):.2f}x" for o in others]] for label, key, kind in RATIOS]


def targets(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(what: str, measured: str, ok: bool) -> None:
        rows.append([what, measured, "met" if ok else "NOT met"])

    peers = results.get("peers", {})
    if "toolkit" in peers and "restic" in peers:
        r = ratio(peers, "backup_a_s", "speed", "restic")
        add("first snapshot >= 3x restic throughput", f"{r:.2f}x", r >= 3)
        r = ratio(peers, "backup_b_s", "speed", "restic")
        add("snapshot after the 3 % update >= 5x faster than restic", f"{r:.2f}x", r >= 5)
        r = ratio(peers, "b_added_bytes", "size", "restic")
        add("... and adds <= 0.75x the bytes restic adds", f"{r:.2f}x", r <= 0.75)
        borgs = [n for n in peers if n.startswith("borg")]
        rs = {o: ratio(peers, "nochange_s", "speed", o) for o in ["restic", *borgs]}
        add(
            "no-change snapshot faster than restic's and borg's",
            ", ".join(f"{v:.2f}x vs {o}" for o, v in rs.items()),
            all(v > 1 for v in rs.values()),
        )
        r = ratio(peers, "restore_s", "speed", "restic")
        r2 = ratio(peers, "restore_plus_sync_s", "speed", "restic")
        sparse = peers["toolkit"]["restore_sparse"] and peers["toolkit"]["restore_ok"]
        add(
            "restore >= 3x restic's, sparse",
            f"{r:.2f}x as run ({r2:.2f}x both + sync); sparse: {'yes' if sparse else 'NO'}",
            r >= 3 and sparse,
        )
        r = ratio(peers, "check_s", "speed", "restic")
        add("verify --read-data >= 2.5x restic check --read-data", f"{r:.2f}x", r >= 2.5)
    many = results.get("many", {}).get("tools", {})
    if "toolkit" in many:
        t = many["toolkit"]["nochange_s"]["median"]
        add(f"{results['many']['volumes']} volumes no-change snapshot < 1 s", f"{t:.2f} s (process wall)", t < 1)
        others = {n: v["nochange_s"]["median"] for n, v in many.items() if n != "toolkit"}
        if others:
            add(
                f"{results['many']['volumes']} volumes no-change faster than the peers",
                ", ".join(f"{o} {v:.2f} s" for o, v in others.items()),
                all(t < v for v in others.values()),
            )
    sp = results.get("sparse")
    if sp:
        add(
            f"peak RSS < 100 MiB with a {sp['size_bytes'] >> 30} GiB sparse volume",
            f"{sp['peak_rss_mib']:.0f} MiB (snapshot {sp['snapshot_rss_mib']:.0f}, "
            f"restore {sp['restore_rss_mib']:.0f}, verify {sp['verify_rss_mib']:.0f})",
            sp["peak_rss_mib"] < 100,
        )
    return rows


def report(results: dict[str, Any]) -> str:
    parts = [f"# compare_peers ({results['started']})", ""]
    if "calibration_zstd3_s" in results:
        parts += [f"Machine marker: `cat A | zstd -3 -T0` = {results['calibration_zstd3_s']:.2f} s", ""]
    if "peers" in results:
        d = results["data"]
        parts += [f"## Data set A: {d['volumes']} x {d['size_mib']} MiB, then B (3 % of blocks rewritten)", ""]
        parts += [peers_tables(results), ""]
    if "many" in results:
        m = results["many"]
        parts += [f"## {m['volumes']} volumes x {m['size_mib']} MiB: no-change backup", ""]
        rows = []
        for name, v in m["tools"].items():
            job = v.get("nochange_job_s", {}).get("median")
            rows.append(
                [
                    name,
                    f"{v['first_s']:.2f}",
                    spread(v["nochange_s"]["values"]),
                    "-" if job is None else f"{job:.3f}",
                    f"{v['nochange_rss_mib']:.0f}",
                ]
            )
        parts += [md_table(["tool", "first backup s", "no-change s", "job (in-process) s", "RSS MiB"], rows), ""]
    if "sparse" in results:
        s = results["sparse"]
        parts += [f"## One {s['size_bytes'] >> 30} GiB sparse volume ({_mib(s['data_bytes'])} MiB of data)", ""]
        rows = [
            ["snapshot", f"{s['snapshot_s']:.2f}", f"{s['snapshot_rss_mib']:.0f}"],
            ["restore", f"{s['restore_s']:.2f}", f"{s['restore_rss_mib']:.0f}"],
            ["verify --read-data", f"{s['verify_s']:.2f}", f"{s['verify_rss_mib']:.0f}"],
        ]
        parts += [md_table(["toolkit step", "wall s", "peak RSS MiB"], rows), ""]
        parts += [
            f"Restored file: {_mib(s['restore_allocated_bytes'])} MiB allocated, "
            f"cmp {'ok' if s['restore_ok'] else 'MISMATCH'}.",
            "",
        ]
    if "restore" in results:
        parts += ["## Restores of data set A, tools taking turns", "", restore_tables(results["restore"]), ""]
    rows = targets(results)
    if rows:
        parts += ["## Targets", "", md_table(["target", "measured", "status"], rows), ""]
    return "\n".join(parts)


def save(results: dict[str, Any], args: argparse.Namespace) -> None:
    path = Path(args.json_out) if args.json_out else Path(args.workdir) / "compare_peers.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=1, help="whole sequences per tool (report medians)")
    ap.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "bench-peers"),
        help="data, repositories and restores go here",
    )
    ap.add_argument("--modes", default="peers,many,sparse", help="comma list of: peers, many, sparse, restore")
    ap.add_argument("--restore-runs", type=int, default=3, help="restores per tool in the restore mode")
    ap.add_argument(
        "--baseline",
        type=lambda v: Path(v).resolve(),
        metavar="DIR",
        help="another checkout of this repository, measured as the tool toolkit-baseline (before/after a change)",
    )
    ap.add_argument("--tools", default="toolkit,restic,borg-zstd3,borg-lz4")
    ap.add_argument("--json-out", help="results file (default WORKDIR/compare_peers.json)")
    ap.add_argument("--reuse-data", action="store_true", help="keep A/B/many from an earlier run when they match")
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_false", help="skip the zstd CLI marker")
    ap.add_argument("--many-volumes", type=int, default=100)
    ap.add_argument("--many-size-mib", type=int, default=4)
    ap.add_argument("--many-repeats", type=int, default=3)
    ap.add_argument("--sparse-gib", type=int, default=20)
    ap.add_argument("--sparse-data-mib", type=int, default=5)
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := [m for m in modes if m not in ("peers", "many", "sparse", "restore")]:
        ap.error(f"unknown mode(s): {', '.join(bad)}")
    if "toolkit" not in args.tools.split(","):
        ap.error("--tools must include toolkit")
    if "peers" in modes or "many" in modes or "restore" in modes:
        find_generator()  # fail before any work when the generator is missing
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "versions": tool_versions(),
    }
    try:
        if "peers" in modes:
            peers_mode(args, workdir, logs, results)
            save(results, args)
        if "many" in modes:
            many_mode(args, workdir, logs, results)
            save(results, args)
        if "sparse" in modes:
            sparse_mode(args, workdir, logs, results)
            save(results, args)
        if "restore" in modes:
            restore_mode(args, workdir, logs, results)
            save(results, args)
    except StepFailed as exc:
        save(results, args)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = report(results)
    (workdir / "compare_peers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
