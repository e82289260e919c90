"""The command line: parse, call a job, render. Only this module prints."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from catalog.check import FileToCheck, verify_files
from catalog.check import verify as verify_repo
from catalog.errors import Error, StoreFull
from catalog.lock import break_lock
from catalog.repo import Repository
from toolkit import __version__
from toolkit.config import TEMPLATE, Config, default_config_path, load_config
from toolkit.errors import SourceNotDirectory, SourceNotFound
from toolkit.ops.restore import parse_as_of, plan_restore
from toolkit.ops.restore import restore as restore_job
from toolkit.ops.snapshot import Source
from toolkit.ops.snapshot import snapshot as snapshot_job
from toolkit.ops.status import DEFAULT_MAX_AGE_HOURS, render_status_text
from toolkit.ops.status import status as status_job

# --- commands (after `history`, before `verify`, say) ---
from toolkit.progress import Progress, human_bytes
from toolkit.runtime import tune_allocator
from toolkit.schedule import (
    Schedule,
    ScheduleInvalid,
    check_user,
    cron_file,
    format_units,
    install,
    repository_owner,
    systemd_units,
    timer_names,
    toolkit_command,
)
from toolkit.transports.base import Transport
from toolkit.transports.local import LocalTransport

if TYPE_CHECKING:
    from toolkit.avm import AvmClient


class RepoMissing(Error):
    template = "no repository given"
    hint = "pass --repo PATH or set TOOLKIT_REPO"
    code = "repo_missing"


@dataclass
class Ctx:
    repo_path: Path | None
    json: bool
    quiet: bool
    config_path: Path | None = None
    config_explicit: bool = False
    allow_other_owner: bool = False
    _config: Config | None = None

    def config(self, *, required: bool = True) -> Config | None:
        if self._config is None:
            path = self.config_path or default_config_path()
            self._config = load_config(path, required=required or self.config_explicit)
        return self._config

    def repo(self) -> Path:
        if self.repo_path is None:
            config = self.config(required=False)
            if config is not None and config.repository is not None:
                self.repo_path = config.repository
        if self.repo_path is None:
            raise RepoMissing()
        return self.repo_path

    @contextlib.contextmanager
    def open(self, *, readonly: bool = True) -> Iterator[Repository]:
        repo = Repository.open(self.repo(), readonly=readonly, allow_other_owner=self.allow_other_owner)
        try:
            yield repo
        finally:
            repo.close()

    @contextlib.contextmanager
    def open_for_verify(self) -> Iterator[Repository]:
        """Writable when possible (verify records what it read); read-only on a full or read-only disk."""
        try:
            repo = Repository.open(self.repo(), allow_other_owner=self.allow_other_owner)
        except StoreFull:
            repo = Repository.open(self.repo(), readonly=True, allow_other_owner=self.allow_other_owner)
        try:
            yield repo
        finally:
            repo.close()

    def progress(self) -> Progress:
        return Progress(quiet=self.quiet or self.json)

    def emit(self, data: dict[str, Any], text: str) -> None:
        if self.json:
            click.echo(json.dumps(data, indent=2, sort_keys=True))
        else:
            click.echo(text)


_pass_ctx = click.make_pass_decorator(Ctx)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Ctx).json = True


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Ctx).quiet = True


def pass_ctx(f: Any) -> Any:
    """Pass the Ctx, and accept --json and -q after the command name too."""
    f = click.option(
        "-q",
        "--quiet",
        "quiet_after",
        is_flag=True,
        expose_value=False,
        callback=_set_quiet,
        help="No progress output.",
    )(_pass_ctx(f))
    return click.option(
        "--json", "json_after", is_flag=True, expose_value=False, callback=_set_json, help="Print one JSON document."
    )(f)


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo",
    type=click.Path(path_type=Path),
    envvar="TOOLKIT_REPO",
    help="Repository directory (or TOOLKIT_REPO).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    envvar="TOOLKIT_CONFIG",
    help="Configuration file (or TOOLKIT_CONFIG; default ~/.config/appstack-toolkit/config.toml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of a table.")
@click.option("--allow-other-owner", is_flag=True, help="Use a repository that belongs to another user.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or log lines on stderr.")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@click.version_option(__version__, prog_name="toolkit")
@click.pass_context
def cli(
    ctx: click.Context,
    repo: Path | None,
    config_path: Path | None,
    as_json: bool,
    allow_other_owner: bool,
    quiet: bool,
    verbose: int,
) -> None:
    """Restore-first backup, verification and recovery for App Volumes volumes.

    \b
    Example:
      toolkit --repo /backup/appstacks init
      toolkit --repo /backup/appstacks snapshot /mnt/datastore1
      toolkit --repo /backup/appstacks verify --read-data
      toolkit --repo /backup/appstacks restore --as-of 2026-11-20T03:00 --to /mnt/restore
    """
    level = logging.WARNING - 10 * verbose if not quiet else logging.ERROR
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(message)s", stream=sys.stderr)
    ctx.obj = Ctx(repo, as_json, quiet, config_path, config_path is not None, allow_other_owner)


@cli.command()
@click.option("--chunk-size", default="1M", show_default=True, help="Fixed chunk size (64K … 4M, power of two).")
@pass_ctx
def init(c: Ctx, chunk_size: str) -> None:
    """Create a repository in an empty or new directory.

    \b
    Example:
      toolkit --repo /backup/appstacks init
    """
    size = parse_size(chunk_size)
    repo = Repository.init(c.repo(), chunk_size=size)
    repo.close()
    c.emit(
        {"repository": str(repo.root), "id": repo.config.id, "chunk_size": size},
        f"created repository {repo.root} (chunk size {human_bytes(size)})",
    )


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(t[:-1]) * units[t[-1]]
        return int(t)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 1M or 256K") from None


def resolve_sources(c: Ctx, names: list[str], stack: contextlib.ExitStack, warn: Callable[[str], None]) -> list[Source]:
    """Directories become local sources; other names (or none) come from the configuration."""
    from toolkit.sites import configured_sources

    local = [n for n in names if "=" in n or Path(n).expanduser().exists() or "/" in n]
    named = [n for n in names if n not in local]
    sources = [parse_source(n) for n in local]
    if named or not names:
        config = c.config()
        if config is None or not config.sites:
            raise NoSources()
        sources += configured_sources(config, named, stack, warn)
    return sources


@dataclass
class Destination:
    transport: Transport
    site: str | None = None
    datastore: str | None = None
    manager: AvmClient | None = None


def resolve_destination(c: Ctx, dest: str, stack: contextlib.ExitStack) -> Destination:
    """A configured datastore (DS or SITE/DS) when one matches and no such directory exists; else a directory."""
    from toolkit.sites import manager_client, open_transport

    path = Path(dest).expanduser()
    if not path.exists():
        config = c.config(required=False)
        for site in config.sites if config else ():
            for ds in site.datastores:
                if dest in (ds.name, f"{site.name}/{ds.name}"):
                    manager = manager_client(site.manager) if site.manager else None
                    return Destination(open_transport(site, ds, stack), site.name, ds.name, manager)
    if path.exists() and not path.is_dir():
        raise SourceNotDirectory(path=path)
    return Destination(LocalTransport(path))


class NoSources(Error):
    template = "nothing to snapshot: no SOURCE given and no site configured"
    hint = "give a datastore directory, or configure sites (toolkit config init)"
    code = "no_sources"


def parse_source(spec: str) -> Source:
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    root = Path(path).expanduser()
    if not root.exists():
        raise SourceNotFound(path=root)
    if not root.is_dir():
        raise SourceNotDirectory(path=root)
    return Source(name or root.resolve().name, LocalTransport(root))


@cli.command()
@click.argument("sources", nargs=-1, metavar="[SOURCE]...")
@click.option("--rehash", is_flag=True, help="Read files even when size and mtime are unchanged.")
@pass_ctx
def snapshot(c: Ctx, sources: tuple[str, ...], rehash: bool) -> None:
    """Capture every volume of the configured sites, or of the given sources.

    With no SOURCE, every site in the configuration file is captured: the
    volumes its App Volumes Manager knows (with the manager's record of each)
    and any other VMDK on its datastores (flagged unmanaged). A SOURCE is a
    configured site or datastore name, or a directory laid out like a
    datastore (recorded under the directory's name, or NAME=DIR).
    Unchanged files (same size and mtime) are recorded without being read.

    \b
    Example:
      toolkit snapshot
      toolkit --repo /backup/appstacks snapshot /mnt/datastore1
      toolkit --repo /backup/appstacks snapshot ds-gold=/mnt/nfs/gold
    """
    progress = c.progress()
    warnings: list[str] = []
    with contextlib.ExitStack() as stack:
        srcs = resolve_sources(c, list(sources), stack, warnings.append)
        with c.open(readonly=False) as repo, repo.writing("snapshot"):
            report = snapshot_job(repo, srcs, rehash=rehash, event=progress, warnings=warnings)
    progress.finish()
    counts = {s: report.count(s) for s in ("new", "changed", "unchanged", "deleted", "failed", "skipped")}
    st = report.stats
    text = (
        f"snapshot {report.snapshot_id[:12]} at {report.created_at}\n"
        f"volumes: {', '.join(f'{n} {s}' for s, n in counts.items() if n) or 'none found'}\n"
        f"read {human_bytes(st.read_bytes)}, {st.new_chunks} new chunks "
        f"({human_bytes(st.new_raw_bytes)} → {human_bytes(st.new_stored_bytes)} stored) in {report.duration_s:.1f} s"
    )
    for v in report.volumes:
        if v["state"] in ("failed", "skipped"):
            text += f"\n{v['state']}: {v['key']}: {v['reason']}"
    for w in report.warnings:
        text += f"\nwarning: {w}"
    c.emit(report.to_json(), text)
    if not report.ok:
        sys.exit(1)


@cli.command()
@pass_ctx
def snapshots(c: Ctx) -> None:
    """List committed snapshots, oldest first.

    \b
    Example:
      toolkit --repo /backup/appstacks snapshots
    """
    with c.open() as repo:
        rows = repo.index.snapshots()
    data = [
        {
            "id": s.id,
            "created_at": s.created_at,
            "hostname": s.hostname,
            "sources": s.sources,
            "stats": s.stats,
        }
        for s in rows
    ]
    text = table(
        [
            [
                s.id[:12],
                s.created_at[:19],
                ",".join(s.sources),
                human_bytes(s.stats.get("bytes_read", 0)),
                human_bytes(s.stats.get("pack_bytes_added", 0)),
            ]
            for s in rows
        ],
        ["ID", "CREATED (UTC)", "SOURCES", "READ", "ADDED"],
    )
    c.emit({"snapshots": data}, text)


@cli.command()
@pass_ctx
def volumes(c: Ctx) -> None:
    """List every volume ever captured with its newest state.

    \b
    Example:
      toolkit --repo /backup/appstacks volumes
    """
    with c.open() as repo:
        latest: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for v in repo.index.all_versions():
            latest[v.volume_key] = v
            counts[v.volume_key] = counts.get(v.volume_key, 0) + 1
        totals = repo.index.stored_totals()
        logical = repo.index.logical_bytes()
    data = [
        {
            "key": k,
            "name": v.name,
            "kind": v.kind,
            "state": v.state,
            "last_seen": v.created_at,
            "size": v.size,
            "versions": counts[k],
        }
        for k, v in latest.items()
    ]
    text = table(
        [
            [
                d["name"] or "",
                d["key"],
                d["kind"],
                d["state"],
                d["last_seen"][:19],
                human_bytes(d["size"]),
                str(d["versions"]),
            ]
            for d in data
        ],
        ["NAME", "VOLUME", "KIND", "STATE", "LAST SNAPSHOT (UTC)", "SIZE", "VERSIONS"],
    )
    ratio = logical / totals[0] if totals[0] else 0.0
    text += (
        f"\nrepository: {human_bytes(totals[0])} in packs for {human_bytes(logical)}"
        f" across {sum(counts.values())} versions (×{ratio:.1f})"
    )
    c.emit({"volumes": data, "pack_bytes": totals[0], "logical_bytes": logical}, text)


@cli.command()
@click.argument("name")
@pass_ctx
def history(c: Ctx, name: str) -> None:
    """Every version of the volumes whose name, path or key matches NAME (a glob).

    \b
    Example:
      toolkit --repo /backup/appstacks history 'Office*'
    """
    with c.open() as repo:
        rows = repo.index.history(name)
        if not rows and not any(ch in name for ch in "*?["):
            rows = repo.index.history(f"*{name}*")
    data = [
        {
            "key": v.volume_key,
            "name": v.name,
            "snapshot": v.snapshot_id,
            "created_at": v.created_at,
            "state": v.state,
            "reason": v.reason,
            "size": v.size,
        }
        for v in rows
    ]
    text = table(
        [
            [
                v.name or "",
                v.volume_key,
                v.snapshot_id[:12],
                v.created_at[:19],
                v.state,
                human_bytes(v.size),
                v.reason or "",
            ]
            for v in rows
        ],
        ["NAME", "VOLUME", "SNAPSHOT", "CREATED (UTC)", "STATE", "SIZE", "REASON"],
    )
    c.emit({"versions": data}, text if rows else f"no volume matches {name!r}")
    if not rows:
        sys.exit(1)


@cli.command()
@click.option(
    "--max-age-hours",
    type=click.FloatRange(0, min_open=True),
    default=DEFAULT_MAX_AGE_HOURS,
    show_default=True,
    metavar="H",
    help="A volume whose last good capture is older than this is a problem.",
)
@pass_ctx
def status(c: Ctx, max_age_hours: float) -> None:
    """How recently each volume was captured and what needs attention; exit 1 on problems.

    Answers from the repository alone (no datastore or manager is contacted),
    so monitoring can run it often. Problems (exit 1): a volume whose last good
    capture is older than --max-age-hours, a volume that failed or was never
    captured, a configured datastore not captured in time, warnings of the
    newest snapshot, a failed verify run. Warnings (exit 0): skipped volumes
    with a recent capture, deletions of the last 7 days, no data verification
    in 8 days. Also: repository size, deduplication, growth.

    \b
    Example:
      toolkit --repo /backup/appstacks status
      toolkit status --max-age-hours 50 --json
    """
    config = c.config(required=False)
    with c.open() as repo:
        report = status_job(repo, config, datetime.now(UTC), max_age_hours)
    c.emit(report.to_json(), render_status_text(report))
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.option(
    "--install",
    "install_dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Write the files into DIR (/etc/systemd/system; /etc/cron.d with --cron) instead of printing them.",
)
@click.option("--user", help="User the jobs run as (default: the repository's owner).")
@click.option("--cron", is_flag=True, help="One cron file instead of systemd units, for hosts without systemd.")
@pass_ctx
def schedule(c: Ctx, install_dir: Path | None, user: str | None, cron: bool) -> None:
    """Timers for the nightly snapshot and the weekly and monthly verify (systemd, or cron).

    Nightly at 02:30 (plus up to 15 min): snapshot, at idle CPU and I/O
    priority. Sundays at 04:00: verify --read-data-subset 15, except on the
    first Sunday of the month: verify --read-data. Each job runs this toolkit
    with the current --config and --repo as --user, reads secrets from
    /etc/appstack-toolkit/env (KEY=value lines) when it exists, and runs at boot
    when the machine was off at the scheduled time. A non-zero exit leaves the
    unit failed, so exit 1 (problems found) reaches systemctl --failed and
    monitoring.

    \b
    Example:
      toolkit --config /etc/appstack-toolkit/config.toml schedule --user appstack
      toolkit --config /etc/appstack-toolkit/config.toml schedule --user appstack --install /etc/systemd/system
      systemctl daemon-reload
      systemctl enable --now appstack-toolkit-snapshot.timer appstack-toolkit-verify.timer \\
        appstack-toolkit-verify-data.timer
    """
    config = c.config()  # the jobs need it; better to fail now than every night
    if config is None or not config.sites:
        raise ScheduleInvalid(detail="the configuration has no [sites.NAME], so the nightly snapshot has nothing to do")
    repository = c.repo().expanduser().absolute()
    config_path = config.path.expanduser().absolute()
    run_as = user or repository_owner(repository) or getpass.getuser()
    check_user(run_as, repository)
    spec = Schedule(toolkit_command(sys.argv[0], sys.executable), config_path, run_as, repository)
    files = [cron_file(spec)] if cron else systemd_units(spec)
    written = install(files, install_dir) if install_dir is not None else []
    timers = timer_names(files)
    if not written:
        text = format_units(files)
    elif cron:
        text = f"wrote {written[0]}\nnext: install -d -o {run_as} -m 0750 /var/log/appstack-toolkit"
    else:
        text = "\n".join(f"wrote {p}" for p in written)
        text += f"\nnext: systemctl daemon-reload && systemctl enable --now {' '.join(timers)}"
    c.emit(
        {
            "user": run_as,
            "files": [{"name": f.name, "text": f.text} for f in files],
            "installed": [str(p) for p in written],
            "timers": timers,
        },
        text,
    )


@cli.command()
@click.option("--read-data", is_flag=True, help="Read every pack and re-check every chunk.")
@click.option(
    "--read-data-subset",
    type=click.FloatRange(0, 100),
    metavar="PCT",
    help="Read PCT % of the stored data, least recently verified first, so runs rotate through everything.",
)
@click.option(
    "--max-duration",
    type=click.FloatRange(0),
    metavar="SECONDS",
    help="Read the least recently verified data until this time is spent.",
)
@click.option("--volume", "volumes", multiple=True, metavar="GLOB", help="Check what restoring these would read.")
@click.option("--as-of", "as_of", help="With --volume: the time the restore would use (default: now).")
@click.option("--coverage", type=click.IntRange(1), metavar="DAYS", help="Report the share of data read in DAYS days.")
@click.option("--history", is_flag=True, help="Show the recorded verify runs instead of verifying.")
@click.option("--drill", is_flag=True, help="Restore a rotating sample to scratch space, check it, clean up, time it.")
@click.option("--live", is_flag=True, help="Compare the datastores and the manager with the newest snapshot.")
@click.option("--source", "sources", multiple=True, help="With --live: a configured site/datastore or a directory.")
@click.option("--rehash", is_flag=True, help="With --live: also re-read unchanged files and compare their content.")
@click.option("--sample", type=click.IntRange(1), default=3, show_default=True, help="With --drill: how many volumes.")
@click.option("--all", "drill_all", is_flag=True, help="With --drill: every volume.")
@click.option("--scratch", type=click.Path(path_type=Path), help="With --drill: where to restore (default: temp dir).")
@pass_ctx
def verify(
    c: Ctx,
    read_data: bool,
    read_data_subset: float | None,
    max_duration: float | None,
    volumes: tuple[str, ...],
    as_of: str | None,
    coverage: int | None,
    history: bool,
    drill: bool,
    sample: int,
    drill_all: bool,
    scratch: Path | None,
    live: bool,
    sources: tuple[str, ...],
    rehash: bool,
) -> None:
    """Prove every stored version can be reassembled; exit 1 naming what is damaged.

    Levels (the report says which ran): metadata (default: documents, packs
    present, every version's manifest and digest), data (--read-data: every
    byte; --read-data-subset / --max-duration: the least recently verified part,
    so successive runs cover everything), restore-path (--volume [--as-of]:
    exactly the chunks that restore would read, reassembled and digested).
    drill (--drill: restore a rotating sample, or --all, into scratch space,
    check the VMDK structure, qemu-img check when installed and the file
    system signature, always clean up, record seconds per GiB).
    Every run is recorded; --history shows them, --coverage DAYS tells how much
    of the stored data was read and found sound within DAYS days.

    \b
    Example:
      toolkit --repo /backup/appstacks verify --read-data
      toolkit --repo /backup/appstacks verify --read-data-subset 10
      toolkit --repo /backup/appstacks verify --max-duration 3600 --coverage 30
      toolkit --repo /backup/appstacks verify --volume 'Office*' --as-of 2026-11-20T03:00
      toolkit --repo /backup/appstacks verify --drill --sample 2
      toolkit verify --live --rehash
      toolkit --repo /backup/appstacks verify --history
    """
    if sum(bool(x) for x in (read_data, read_data_subset is not None, volumes and not drill, drill)) > 1:
        raise click.UsageError("use one of --read-data, --read-data-subset, --volume, --drill")
    if as_of and not (volumes or drill):
        raise click.UsageError("--as-of needs --volume or --drill")
    if history:
        with c.open() as repo:
            runs = repo.index.verify_runs()
        rows = [
            [
                r["started_at"][:19],
                r["level"],
                r["scope"],
                "ok" if r["ok"] else f"{r['problems']} problem(s)",
                human_bytes(r["bytes_read"]),
                f"{r['duration_s']:.1f} s",
            ]
            for r in runs
        ]
        c.emit({"runs": runs}, table(rows, ["STARTED (UTC)", "LEVEL", "SCOPE", "RESULT", "READ", "TOOK"]))
        return
    if drill:
        run_drill(c, as_of, list(volumes), None if drill_all else sample, scratch)
        return
    if live:
        run_live(c, list(sources), rehash)
        return
    progress = c.progress()
    started_at = datetime.now(UTC)
    with c.open_for_verify() as repo:  # records which packs were read, for the rotation
        if volumes:
            when = parse_as_of(as_of, repo) if as_of else started_at.isoformat(timespec="microseconds")
            plan, _notes = plan_restore(repo, when, list(volumes), one_destination=False)
            files = [
                FileToCheck(
                    p.version.volume_key, p.version.snapshot_id, p.version.created_at, f.path, f.manifest_id, f.digest
                )
                for p in plan
                for f in p.files
            ]
            report = verify_files(repo, files, progress=lambda n: progress("bytes", {"n": n}))
            scope = f"volumes {' '.join(volumes)} as of {when[:19]}"
        else:
            report = verify_repo(
                repo,
                read_data=read_data,
                subset_pct=read_data_subset,
                max_duration_s=max_duration,
                progress=lambda n: progress("bytes", {"n": n}),
            )
            scope = "all" if report.level != "data-subset" else f"{report.packs_read} least recently verified packs"
        duration = (datetime.now(UTC) - started_at).total_seconds()
        record_verify_run(
            repo,
            report.warnings,
            {
                "started_at": started_at.isoformat(timespec="microseconds"),
                "duration_s": duration,
                "level": report.level,
                "scope": scope,
                "ok": report.ok,
                "problems": len(report.problems),
                "bytes_read": report.bytes_read,
                "packs_read": report.packs_read,
                "detail": {"problems": [p.message for p in report.problems][:50]},
            },
        )
        cover = None
        if coverage:
            since = (started_at - timedelta(days=coverage)).isoformat(timespec="microseconds")
            done, total = repo.index.coverage(since)
            cover = {
                "days": coverage,
                "bytes_read": done,
                "bytes_total": total,
                "share": done / total if total else 1.0,
            }
    progress.finish()
    lines = [
        f"verify ({report.level}): {report.snapshots} snapshots, {report.versions} versions, "
        f"{report.manifests} files, {report.packs_read}/{report.packs_total} packs read "
        f"({human_bytes(report.bytes_read)}, {report.chunks_read} chunks) in {duration:.1f} s"
    ]
    for w in report.warnings:
        lines.append(f"warning: {w}")
    for p in report.problems:
        lines.append(f"DAMAGED {p.kind}: {p.message}")
        for a in p.affected:
            lines.append(f"  affects {a.volume} in snapshot {a.snapshot_id[:12]} ({a.created_at[:19]}): {a.path}")
    if cover is not None:
        lines.append(
            f"coverage: {cover['share']:.0%} of stored data ({human_bytes(cover['bytes_read'])} of "
            f"{human_bytes(cover['bytes_total'])}) read and found sound in the last {coverage} days"
        )
    if not report.ok:
        lines.append(f"{len(report.problems)} problem(s) found")
    elif report.level == "metadata":
        lines.append("ok: metadata consistent; no data was read (use --read-data to read every byte)")
    else:
        lines.append("ok: every version checked is restorable")
    c.emit(report.to_json() | {"coverage": cover, "duration_s": round(duration, 3)}, "\n".join(lines))
    if not report.ok:
        sys.exit(1)


def record_verify_run(repo: Repository, warnings: list[str], run: dict[str, Any]) -> None:
    """Store a verify run in the catalog; a full or read-only disk only costs the record."""
    import sqlite3

    try:
        repo.index.add_verify_run(run)
    except (Error, sqlite3.Error) as exc:
        warnings.append(f"could not record this run in the catalog ({exc})")


def run_live(c: Ctx, names: list[str], rehash: bool) -> None:
    from toolkit.ops.live import live_check

    started_at = datetime.now(UTC)
    warnings: list[str] = []
    with contextlib.ExitStack() as stack:
        srcs = resolve_sources(c, names, stack, warnings.append)
        with c.open_for_verify() as repo:
            report = live_check(repo, srcs, rehash=rehash)
            report.warnings[:0] = warnings
            record_verify_run(
                repo,
                report.warnings,
                {
                    "started_at": started_at.isoformat(timespec="microseconds"),
                    "duration_s": (datetime.now(UTC) - started_at).total_seconds(),
                    "level": "live" + (" (rehash)" if rehash else ""),
                    "scope": ", ".join(s.datastore for s in srcs),
                    "ok": report.ok and not report.warnings,
                    "problems": len(report.problems),
                    "bytes_read": report.bytes_read,
                    "packs_read": 0,
                    "detail": {"problems": report.problems[:50]},
                },
            )
    lines = [f"verify (live{', rehash' if rehash else ''}): {report.volumes_checked} volumes compared"]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"{p['kind'].upper()}: {p['volume']}: {p['detail']}" for p in report.problems]
    lines.append("ok: the datastores match the newest snapshot" if report.ok else f"{len(report.problems)} problem(s)")
    c.emit(report.to_json(), "\n".join(lines))
    if not report.ok or report.warnings:
        sys.exit(1)


def run_drill(c: Ctx, as_of: str | None, patterns: list[str], sample: int | None, scratch: Path | None) -> None:
    from toolkit.ops.drill import choose
    from toolkit.ops.drill import drill as drill_job

    started_at = datetime.now(UTC)
    with c.open(readonly=False) as repo:
        when = parse_as_of(as_of, repo) if as_of else started_at.isoformat(timespec="microseconds")
        keys = choose(repo, when, sample, patterns)
        results = drill_job(repo, when, keys, scratch=scratch)
        ok = all(r.ok for r in results)
        duration = (datetime.now(UTC) - started_at).total_seconds()
        drill_warnings: list[str] = []
        record_verify_run(
            repo,
            drill_warnings,
            {
                "started_at": started_at.isoformat(timespec="microseconds"),
                "duration_s": duration,
                "level": "drill",
                "scope": f"{len(keys)} volume(s)",
                "ok": ok,
                "problems": sum(len(r.problems) for r in results),
                "bytes_read": sum(r.size for r in results),
                "packs_read": 0,
                "detail": {"volumes": keys, "results": [r.to_json() for r in results]},
            },
        )
    rows = [
        [
            r.volume,
            "ok" if r.ok else "FAILED",
            human_bytes(r.size),
            f"{r.seconds:.1f} s",
            "; ".join(r.problems) or f"{len(r.checks)} checks passed",
        ]
        for r in results
    ]
    text = table(rows, ["VOLUME", "DRILL", "SIZE", "TOOK", "DETAIL"])
    total = sum(r.size for r in results)
    if total:
        text += f"\nrecovery time: {sum(r.seconds for r in results) / (total / (1 << 30)):.1f} s per GiB"
    for w in drill_warnings:
        text += f"\nwarning: {w}"
    c.emit({"level": "drill", "ok": ok, "results": [r.to_json() for r in results], "warnings": drill_warnings}, text)
    if not ok:
        sys.exit(1)


@cli.command()
@click.option("--as-of", "as_of", help="ISO 8601 time (local if no zone) or a snapshot id.")
@click.option(
    "--previous",
    type=click.IntRange(1),
    metavar="N",
    help="Instead of the newest version, the Nth distinct version before it (with --as-of: before that time).",
)
@click.option("--volume", "volumes", multiple=True, metavar="GLOB", help="Only volumes whose name, path or key match.")
@click.option("--datastore", "datastores", multiple=True, help="Only volumes captured from this datastore.")
@click.option("--to", "dest", required=True, help="A configured datastore (DS or SITE/DS), or a directory.")
@click.option("--dry-run", is_flag=True, help="Show what would be restored; write nothing.")
@click.option("--overwrite", is_flag=True, help="Replace files that exist and differ (never ones desktops use).")
@click.option("--register", is_flag=True, help="Import the restored volumes into the site's App Volumes Manager.")
@pass_ctx
def restore(
    c: Ctx,
    as_of: str | None,
    previous: int | None,
    volumes: tuple[str, ...],
    datastores: tuple[str, ...],
    dest: str,
    dry_run: bool,
    overwrite: bool,
    register: bool,
) -> None:
    """Restore each volume as it was at --as-of onto a datastore or into a directory.

    Each volume is written at its datastore-relative path, through a
    temporary name, checked against the digest recorded at capture, then
    renamed. Zero chunks stay holes. A re-run skips files already in place.
    With --to a configured datastore, volumes the manager reports attached to
    desktops are never replaced, and --register imports the restored volumes
    and checks the manager lists them again with their recorded GUID.

    \b
    Example:
      toolkit --repo /backup/appstacks restore --as-of 2026-11-20T03:00 --to /mnt/restore
      toolkit --repo /backup/appstacks restore --as-of 2026-11-20 --volume 'Office*' --to /mnt/restore --dry-run
      toolkit restore --as-of 2026-11-20T03:00 --volume 'Office 2016' --to dc1/appstacks-nfs --register
      toolkit restore --previous 1 --volume 'Office 2016' --to /mnt/restore
    """
    if as_of is None and previous is None:
        raise click.UsageError("give --as-of TIME or --previous N")
    from toolkit.ops.register import NoManager, in_use
    from toolkit.ops.register import register as register_volumes

    stack = contextlib.ExitStack()
    target = resolve_destination(c, dest, stack)
    if register and target.manager is None:
        raise NoManager(site=target.site or dest)
    protected: dict[str, str] = {}
    if target.manager is not None and target.datastore is not None:
        protected = in_use(target.manager.inventory(), target.datastore)
    progress = c.progress()
    with stack, c.open() as repo:
        when = parse_as_of(as_of, repo) if as_of else datetime.now(UTC).isoformat(timespec="microseconds")
        report = restore_job(
            repo,
            when,
            target.transport,
            patterns=list(volumes),
            # Onto a configured datastore: by default the copies captured from that same datastore.
            datastores=list(datastores) or ([target.datastore] if target.datastore else None),
            dry_run=dry_run,
            overwrite=overwrite,
            previous=previous,
            protected=protected,
            event=progress,
        )
    if register and not dry_run and target.manager is not None and target.datastore is not None:
        register_volumes(target.manager, target.datastore, report.volumes)
    progress.finish()
    rows = [
        [
            v["key"],
            v["status"],
            v.get("captured_at", "")[:19],
            human_bytes(v.get("size", 0)),
            v.get("error") or v.get("note") or v.get("reason") or "",
        ]
        for v in report.volumes
    ]
    text = table(rows, ["VOLUME", "STATUS", "CAPTURED (UTC)", "SIZE", "NOTE"])
    if not dry_run:
        text += f"\nwrote {human_bytes(report.bytes_written)} in {report.duration_s:.1f} s"
    c.emit(report.to_json(), text)
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.option("--keep-last", type=click.IntRange(0), default=0, help="Keep the N newest snapshots.")
@click.option("--keep-daily", type=click.IntRange(0), default=0, help="Keep the newest snapshot of each of N days.")
@click.option("--keep-weekly", type=click.IntRange(0), default=0, help="… of each of N ISO weeks.")
@click.option("--keep-monthly", type=click.IntRange(0), default=0, help="… of each of N months.")
@click.option("--keep-yearly", type=click.IntRange(0), default=0, help="… of each of N years.")
@click.option(
    "--keep-deleted-days",
    type=click.FloatRange(0),
    default=None,
    help="Keep a deleted volume's last version this long after its deletion (default: forever).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be removed and freed; change nothing.")
@pass_ctx
def prune(
    c: Ctx,
    keep_last: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    keep_deleted_days: float | None,
    dry_run: bool,
) -> None:
    """Remove snapshots the retention policy does not keep, and free their space.

    The newest snapshot is always kept, and so is the last version of every
    volume that has been deleted from the datastores (for --keep-deleted-days,
    default forever), so retention never finishes what an accidental deletion
    started. Space is freed by deleting packs nothing references and repacking
    those mostly unreferenced. Times are bucketed in UTC.

    \b
    Example:
      toolkit --repo /backup/appstacks prune --keep-daily 14 --keep-weekly 8 --keep-monthly 12 --dry-run
    """
    from datetime import UTC, datetime

    from catalog.prune import Policy
    from catalog.prune import prune as prune_repo

    policy = Policy(keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_deleted_days)
    with c.open(readonly=False) as repo, repo.writing("prune"):
        report = prune_repo(repo, policy, dry_run=dry_run, now=datetime.now(UTC))
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {len(report.removed)} snapshot(s), kept {len(report.kept)}"]
    lines += [f"  keep {sid[:12]}: {', '.join(why)}" for sid, why in sorted(report.kept.items())]
    lines += [f"  {verb.split()[-1]} {sid[:12]}" for sid in report.removed]
    lines.append(
        f"{'would free' if dry_run else 'freed'} {human_bytes(report.bytes_freed)} "
        f"({report.packs_deleted} pack(s) deleted, {report.packs_repacked} repacked)"
    )
    c.emit(report.to_json(), "\n".join(lines))


@cli.command()
@click.option(
    "--rebuild-catalog",
    is_flag=True,
    required=True,
    help="Rebuild catalog.db from packs and snapshot documents.",
)
@pass_ctx
def repair(c: Ctx, rebuild_catalog: bool) -> None:
    """Rebuild the catalog from the packs and snapshot documents alone.

    \b
    Example:
      toolkit --repo /backup/appstacks repair --rebuild-catalog
    """
    from catalog.rebuild import rebuild_catalog as rebuild

    result = rebuild(c.repo())
    c.emit(
        result,
        f"catalog rebuilt: {result['packs']} packs, {result['snapshots']} snapshots"
        + (f" (old catalog kept as {result['old_catalog']})" if result.get("old_catalog") else ""),
    )


@cli.command()
@click.option("--force", is_flag=True, help="Remove the lock even if its holder may still run (another host).")
@click.option(
    "--older-than",
    type=click.FloatRange(0, min_open=True),
    metavar="HOURS",
    help="Also treat a lock taken more than HOURS ago as stale (a holder on another host that died).",
)
@pass_ctx
def unlock(c: Ctx, force: bool, older_than: float | None) -> None:
    """Remove a writer lock left by a job that died.

    A lock whose process is gone from this host is stale and removed. A lock
    from another host is only removed when older than --older-than HOURS, or
    with --force. A live holder keeps its lock (exit 3, naming it).

    \b
    Example:
      toolkit --repo /backup/appstacks unlock
      toolkit --repo /backup/appstacks unlock --older-than 24
    """
    held = break_lock(c.repo(), force=force, older_than_s=older_than * 3600 if older_than else None)
    if held is None:
        c.emit({"removed": None}, "repository is not locked")
    else:
        c.emit(
            {"removed": {"owner": held.owner, "pid": held.pid, "host": held.host, "since": held.since}},
            f"removed the lock of pid {held.pid} on {held.host} ({held.command}, since {held.since})",
        )


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path), default="toolkit-demo")
@click.option(
    "--flavour",
    type=click.Choice(["2.x", "4.x"]),
    default="2.x",
    show_default=True,
    help="Manager version to simulate.",
)
@pass_ctx
def demo(c: Ctx, directory: Path, flavour: str) -> None:
    """Run the whole story on an embedded lab in DIRECTORY (default ./toolkit-demo).

    Creates two datastores in a storage group and an App Volumes Manager
    simulator, then: snapshot, an AppStack update, an accidental deletion that
    replication copies to the replica, verify --read-data, and a restore of the
    deleted AppStack onto its datastore registered with the manager again.
    Safe to re-run: it replaces a directory it made before.

    \b
    Example:
      toolkit demo
      toolkit demo /tmp/demo --flavour 4.x
    """
    from toolkit.lab.demo import run_demo

    run_demo(
        directory.resolve(), lambda text: click.echo(text, err=c.json), flavour="4.x" if flavour == "4.x" else "2.x"
    )
    if c.json:
        click.echo(json.dumps({"ok": True, "directory": str(directory.resolve())}))


@cli.group()
def lab() -> None:
    """A simulated App Volumes site on this machine, for trying every command."""


@lab.command("up")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--flavour",
    type=click.Choice(["2.x", "4.x"]),
    default="2.x",
    show_default=True,
    help="Manager version to simulate.",
)
@click.option("--tls", is_flag=True, help="Serve the manager over HTTPS with a self-signed certificate (pinned).")
@click.option("--port", type=int, default=0, help="Manager port (default: a free one).")
@click.option("--vcsim", is_flag=True, help="Also run a vCenter simulator over the datastores (datastore HTTP).")
@click.option("--sshd", is_flag=True, help="Also run a loopback sshd as an ESXi stand-in (SFTP, host hashing).")
@pass_ctx
def lab_up_cmd(c: Ctx, directory: Path, flavour: str, tls: bool, port: int, vcsim: bool, sshd: bool) -> None:
    """Start a simulated site in the foreground and write a ready configuration.

    Datastores ds1 and ds2 (a storage group) are directories under DIRECTORY,
    seeded with sample volumes the first time; the App Volumes Manager
    simulator imports them. With --sshd the site reaches them over SFTP (as an
    ESXi host), else with --vcsim over datastore HTTP, else as local mounts.
    DIRECTORY/toolkit.toml configures the site. Ctrl-C stops everything it started.

    \b
    Example:
      toolkit lab up /tmp/lab
      TOOLKIT_CONFIG=/tmp/lab/toolkit.toml toolkit snapshot
    """
    import signal
    import threading

    from toolkit.lab.up import lab_up

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def ready(facts: dict[str, Any]) -> None:
        if c.json:
            click.echo(json.dumps(facts))

    lab_up(
        directory.resolve(),
        lambda text: click.echo(text, err=c.json),
        flavour="4.x" if flavour == "4.x" else "2.x",
        tls=tls,
        port=port,
        vcsim=vcsim,
        sshd=sshd,
        stop=stop,
        ready=ready,
    )


@cli.group()
def config() -> None:
    """Write and show the configuration file."""


@config.command("init")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@pass_ctx
def config_init(c: Ctx, path: Path | None, force: bool) -> None:
    """Write a commented configuration template (mode 0600).

    \b
    Example:
      toolkit config init
      toolkit config init /etc/appstack-toolkit/config.toml
    """
    target = path or c.config_path or default_config_path()
    if target.exists() and not force:
        raise ConfigExists(path=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(TEMPLATE)
    c.emit({"written": str(target)}, f"wrote {target}; edit it, then run: toolkit init && toolkit snapshot")


class ConfigExists(Error):
    template = "{path} already exists"
    hint = "edit it, or pass --force to replace it with the template"
    code = "config_exists"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and turn errors into one line and an exit code."""
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    tune_allocator()
    try:
        cli.main(args=argv, prog_name="toolkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except Error as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "code": exc.code, "message": str(exc), "hint": exc.hint_text}))
        click.echo(f"error: {exc}", err=True)
        if exc.hint_text:
            click.echo(f"hint: {exc.hint_text}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        os._exit(0)
    except Exception:  # noqa: BLE001 (a bug: show everything, exit 70)
        traceback.print_exc()
        click.echo("error: unexpected failure (a bug); please report the traceback above", err=True)
        sys.exit(70)
