"""The command line: parse, call a job, render. Only this module prints."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from catalog.check import FileToCheck, verify_files
from catalog.check import verify as verify_repo
from catalog.crypto import CIPHERS, RepoKeys
from catalog.errors import Error, StoreFull, StoreNotFound
from catalog.keys import DEFAULT_KDF, TEST_KDF, KdfParams, NotEncrypted, PassphraseRequired, unlocked
from catalog.keys import unlock as unlock_keys
from catalog.lock import break_lock
from catalog.remote import DEFAULT_CACHE_BYTES, break_remote_lock, remote_writer_lock
from catalog.repo import Repository, read_config
from toolkit import __version__
from toolkit.config import (
    CHECK_TIMEOUT_S,
    MAX_AGE_HOURS,
    TEMPLATE,
    Config,
    default_config_path,
    kdf_weakened_for_tests,
    load_config,
    passphrase_source,
)
from toolkit.errors import SourceNotDirectory, SourceNotFound
from toolkit.location import remote_url
from toolkit.ops.restore import parse_as_of, plan_restore
from toolkit.ops.restore import restore as restore_job
from toolkit.ops.snapshot import Source
from toolkit.ops.snapshot import snapshot as snapshot_job

# --- commands (after `history`, before `verify`, say) ---
from toolkit.progress import EVENT_INTERVAL_S, Progress, human_bytes, open_events, setup_logging
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
    from catalog.salvage import SalvageReport
    from toolkit.avm import AvmClient
    from toolkit.ops.endpoints import CheckRow
    from toolkit.s3repo import S3Access


class RepoMissing(Error):
    template = "no repository given"
    hint = "pass --repo PATH or set TOOLKIT_REPO"
    code = "repo_missing"


class NewPassphraseRequired(Error):
    template = "no new passphrase given"
    hint = (
        "set TOOLKIT_NEW_PASSPHRASE, pass --new-passphrase-file FILE or --new-passphrase-command CMD, "
        "or run on a terminal"
    )
    code = "new_passphrase_required"


@dataclass
class Ctx:
    repo_path: Path | None
    json: bool
    quiet: bool
    config_path: Path | None = None
    config_explicit: bool = False
    allow_other_owner: bool = False
    verbose: int = 0
    progress_json: str | None = None  # --progress-json: a file, or - for stderr
    progress_interval_s: float = EVENT_INTERVAL_S
    passphrase_file: Path | None = None
    passphrase_command: str | None = None
    _config: Config | None = None
    _unlocked: dict[Path, tuple[RepoKeys, str] | None] = field(default_factory=dict)
    # A repository other than --repo with its own passphrase source (copy --from/--to): root -> (file, command).
    passphrase_sources: dict[Path, tuple[Path | None, str | None]] = field(default_factory=dict)
    cache_dir: Path | None = None  # --cache-dir: where repositories in object storage are cached
    cache_bytes: int = DEFAULT_CACHE_BYTES  # --cache-size: packs kept in that cache
    _s3: dict[str, S3Access] = field(default_factory=dict)
    command: str | None = None  # the subcommand run
    result: dict[str, Any] | None = None  # what it emitted: the JSON a notification carries

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

    def s3(self, url: str) -> S3Access:
        """A repository in object storage and this host's cache of it, attached once per command."""
        from toolkit.s3repo import attach  # the object-storage client loads only for a bucket

        if url not in self._s3:
            self._s3[url] = attach(url, self.cache_dir)
        return self._s3[url]

    def local_root(self, root: Path) -> Path:
        """The directory with the repository's config and keys: the repository, or this host's cache of it."""
        url = remote_url(root)
        return self.s3(url).root if url is not None else root

    def directory(self, command: str) -> Path:
        """--repo, for a command that works on a directory repository only."""
        root = self.repo()
        url = remote_url(root)
        if url is not None:
            from toolkit.s3repo import RemoteUnsupported

            raise RemoteUnsupported(command=command, url=url)
        return root

    def passphrase(self, root: Path, *, new: bool = False, confirm: bool = False) -> str:
        """The repository passphrase (``new``: a key slot's new one) from its source, else asked on a terminal."""
        file, command = self.passphrase_sources.get(root, (self.passphrase_file, self.passphrase_command))
        source = passphrase_source(
            None if new else file,
            None if new else command,
            self.config(required=False),
            new=new,
        )
        if source is not None:
            return source.get()
        shown = remote_url(root) or root
        if not sys.stdin.isatty():
            raise NewPassphraseRequired() if new else PassphraseRequired(path=shown)
        prompt = f"{'new ' if new else ''}passphrase for {shown}"
        return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True))

    def unlock(self, root: Path | None = None) -> tuple[RepoKeys, str] | None:
        """(keys, key slot) of an encrypted repository (--repo, or ``root``), unlocked once per command; None when
        unencrypted."""
        root = root or self.repo()
        if root not in self._unlocked:
            local = self.local_root(root)
            config = read_config(local)
            enc = config.encryption
            self._unlocked[root] = None if enc is None else unlock_keys(local, config.id, enc, self.passphrase(root))
        return self._unlocked[root]

    def keys(self, root: Path | None = None) -> RepoKeys | None:
        unlocked_repo = self.unlock(root)
        return None if unlocked_repo is None else unlocked_repo[0]

    def kdf(self) -> KdfParams:
        return TEST_KDF if kdf_weakened_for_tests() else DEFAULT_KDF

    @contextlib.contextmanager
    def open(self, *, readonly: bool = True, root: Path | None = None) -> Iterator[Repository]:
        """The repository of --repo, or the one at ``root``."""
        root = root or self.repo()
        keys = self.keys(root)
        url = remote_url(root)
        if url is not None:  # object storage: through this host's cache, brought up to date first
            command = getattr(click.get_current_context(silent=True), "info_name", None) or "read"
            from toolkit.s3repo import open_repository

            repo = open_repository(self.s3(url), keys=keys, cache_bytes=self.cache_bytes, command=command)
        else:
            repo = Repository.open(root, readonly=readonly, allow_other_owner=self.allow_other_owner, keys=keys)
        try:
            yield repo
        finally:
            repo.close()

    @contextlib.contextmanager
    def open_for_verify(self) -> Iterator[Repository]:
        """Writable when possible (verify records what it read); read-only on a full or read-only disk."""
        if remote_url(self.repo()) is not None:
            with self.open(readonly=False) as repo:
                yield repo
            return
        keys = self.keys()
        try:
            repo = Repository.open(self.repo(), allow_other_owner=self.allow_other_owner, keys=keys)
        except StoreFull:
            repo = Repository.open(self.repo(), readonly=True, allow_other_owner=self.allow_other_owner, keys=keys)
        try:
            yield repo
        finally:
            repo.close()

    def progress(self, command: str = "") -> Progress:
        """The progress of a long job; it ends with the command, after an error too (docs/progress.md)."""
        command = command or str(click.get_current_context().info_name)
        events, close = open_events(self.progress_json) if self.progress_json else (None, False)
        progress = Progress(
            command,
            quiet=self.quiet or self.json or self.progress_json == "-",
            verbose=self.verbose,
            events=events,
            close_events=close,
            interval_s=self.progress_interval_s,
        )
        click.get_current_context().call_on_close(progress.close)
        return progress

    def emit(self, data: dict[str, Any], text: str) -> None:
        self.result = data
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


# What names a repository: --repo, and copy's --from and --to.
REPO_TYPE = click.Path(path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo",
    type=REPO_TYPE,
    envvar="TOOLKIT_REPO",
    help="Repository directory, or s3://BUCKET/PREFIX in S3-compatible object storage (or TOOLKIT_REPO).",
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
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Encrypted repository: read the passphrase from FILE (mode 0600). Else TOOLKIT_PASSPHRASE, "
    "the configuration, or a prompt on a terminal.",
)
@click.option(
    "--passphrase-command",
    metavar="CMD",
    help="Encrypted repository: the passphrase is what CMD prints (run without a shell).",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TOOLKIT_LOG_FILE",
    help="Append timestamped log lines (progress, warnings; -vv: debug) to FILE (or TOOLKIT_LOG_FILE).",
)
@click.option(
    "--progress-json",
    metavar="FILE",
    envvar="TOOLKIT_PROGRESS_JSON",
    help="Append JSON-lines progress events of snapshot, verify, restore, prune and copy to FILE, - for stderr "
    "(or TOOLKIT_PROGRESS_JSON).",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(0),
    default=EVENT_INTERVAL_S,
    show_default=True,
    metavar="SECONDS",
    help="At most one progress event per SECONDS.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TOOLKIT_CACHE_DIR",
    help="s3:// repositories: where this host keeps their catalogs and recently used packs (or "
    "TOOLKIT_CACHE_DIR; default ~/.cache/appstack-toolkit). Disposable: rebuilt from the bucket.",
)
@click.option(
    "--cache-size",
    default="4G",
    show_default=True,
    envvar="TOOLKIT_CACHE_SIZE",
    metavar="SIZE",
    help="s3:// repositories: packs kept in the cache, least recently used out first (or TOOLKIT_CACHE_SIZE).",
)
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
    log_file: Path | None,
    progress_json: str | None,
    progress_interval: float,
    passphrase_file: Path | None,
    passphrase_command: str | None,
    cache_dir: Path | None,
    cache_size: str,
) -> None:
    """Restore-first backup, verification and recovery for App Volumes volumes.

    \b
    Example:
      toolkit --repo /backup/appstacks init
      toolkit --repo /backup/appstacks snapshot /mnt/datastore1
      toolkit --repo /backup/appstacks verify --read-data
      toolkit --repo /backup/appstacks restore --as-of 2026-11-20T03:00 --to /mnt/restore
      toolkit --repo s3://appstack-backup/dc1 snapshot /mnt/datastore1
    """
    setup_logging(quiet=quiet, verbose=verbose, log_file=log_file)
    run = ctx.obj if isinstance(ctx.obj, Run) else None  # main()'s record of this run, for the notification
    ctx.obj = Ctx(repo, as_json, quiet, config_path, config_path is not None, allow_other_owner)
    ctx.obj.command = ctx.invoked_subcommand
    if run is not None:
        run.ctx = ctx.obj
    ctx.obj.verbose, ctx.obj.progress_json, ctx.obj.progress_interval_s = verbose, progress_json, progress_interval
    ctx.obj.passphrase_file, ctx.obj.passphrase_command = passphrase_file, passphrase_command
    ctx.obj.cache_dir, ctx.obj.cache_bytes = cache_dir, parse_size(cache_size)


@cli.command()
@click.option("--chunk-size", default="1M", show_default=True, help="Fixed chunk size (64K … 4M, power of two).")
@click.option(
    "--encryption",
    type=click.Choice(["none", *CIPHERS]),
    default="none",
    show_default=True,
    help="Encrypt every chunk, manifest and snapshot document; a passphrase opens the key (docs/format.md §11).",
)
@click.option(
    "--object-lock-days",
    type=click.IntRange(1),
    metavar="DAYS",
    help="s3:// only: every pack and snapshot document is uploaded with an Object Lock retention of DAYS days "
    "(the bucket must have Object Lock); prune leaves them until then.",
)
@click.option(
    "--object-lock-mode",
    type=click.Choice(["compliance", "governance"]),
    default="compliance",
    show_default=True,
    help="With --object-lock-days: compliance (nobody can shorten it) or governance (users allowed to bypass can).",
)
@pass_ctx
def init(c: Ctx, chunk_size: str, encryption: str, object_lock_days: int | None, object_lock_mode: str) -> None:
    """Create a repository in an empty or new directory, or an empty s3:// bucket or prefix.

    With --encryption, everything stored is encrypted and authenticated and
    chunk ids are keyed; the passphrase of the first key slot comes from
    --passphrase-file, --passphrase-command, TOOLKIT_PASSPHRASE or the
    configuration, or is asked twice on a terminal. Without the passphrase
    (or another key slot's) nothing stored can be read again.

    In object storage (--repo s3://BUCKET/PREFIX; credentials, endpoint and
    region from the usual AWS environment), --object-lock-days makes every
    pack and snapshot document immutable for that many days after its upload.

    \b
    Example:
      toolkit --repo /backup/appstacks init
      toolkit --repo /backup/appstacks --passphrase-file /etc/appstack-toolkit/passphrase init --encryption aes-256-gcm
      toolkit --repo s3://appstack-backup/dc1 init --object-lock-days 30
    """
    from toolkit.objstore import LockMode
    from toolkit.s3repo import ObjectLockPolicy, init_repository

    size = parse_size(chunk_size)
    root = c.repo()
    url = remote_url(root)
    if object_lock_days is not None and url is None:
        raise click.UsageError("--object-lock-days needs an s3:// repository")
    cipher = None if encryption == "none" else encryption
    passphrase = c.passphrase(root, confirm=True) if cipher else None
    lock = None
    if url is not None:
        policy = ObjectLockPolicy(LockMode(object_lock_mode.upper()), object_lock_days) if object_lock_days else None
        config, access = init_repository(
            url, c.cache_dir, chunk_size=size, encryption=cipher, passphrase=passphrase, kdf=c.kdf(), lock_policy=policy
        )
        where, repo_id = access.url, config.id
        lock = {"mode": policy.mode.value, "days": policy.days} if policy is not None else None
    else:
        repo = Repository.init(root, chunk_size=size, encryption=cipher, passphrase=passphrase, kdf=c.kdf())
        repo.close()
        where, repo_id = str(repo.root), repo.config.id
    details = [f"chunk size {human_bytes(size)}"]
    if cipher:
        details.append(f"encrypted with {cipher}")
    if lock is not None:
        details.append(f"object lock {lock['mode']} for {lock['days']} day(s) after each upload")
    text = f"created repository {where} ({', '.join(details)})"
    if cipher:
        text += "\nkeep the passphrase safe: without it nothing stored can be read"
        text += "" if url is not None else "; add a second passphrase for recovery with: toolkit key add"
    data = {"repository": where, "id": repo_id, "chunk_size": size, "encryption": cipher}
    c.emit(data | ({"object_lock": lock} if url is not None else {}), text)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
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
    vsan: Any = None  # a toolkit.ops.vsan.VsanDestination when the datastore is vSAN


def resolve_destination(c: Ctx, dest: str, stack: contextlib.ExitStack) -> Destination:
    """A configured datastore (DS or SITE/DS) when one matches and no such directory exists; else a directory."""
    from toolkit.sites import manager_client, open_transport, vsan_destination

    path = Path(dest).expanduser()
    if not path.exists():
        config = c.config(required=False)
        for site in config.sites if config else ():
            for ds in site.datastores:
                if dest in (ds.name, f"{site.name}/{ds.name}"):
                    manager = manager_client(site.manager) if site.manager else None
                    transport = open_transport(site, ds, stack)
                    vsan = vsan_destination(site, ds, transport, stack)
                    return Destination(transport, site.name, ds.name, manager, vsan)
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
    progress = c.progress("snapshot")
    warnings: list[str] = []
    with contextlib.ExitStack() as stack:
        srcs = resolve_sources(c, list(sources), stack, warnings.append)
        with c.open(readonly=False) as repo, repo.writing("snapshot"):
            report = snapshot_job(repo, srcs, rehash=rehash, event=progress, warnings=warnings)
            uploaded = _uploads(repo)
    progress.finish(report.ok, warnings=report.warnings)
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
    if uploaded is not None:
        text += f"\n{uploaded[1]}" if uploaded[1] else ""
    c.emit(report.to_json() | ({"uploaded": uploaded[0]} if uploaded is not None else {}), text)
    if not report.ok:
        sys.exit(1)


def _uploads(repo: Repository) -> tuple[dict[str, Any], str] | None:
    """What a writer uploaded to object storage (JSON, a line); None for a directory repository."""
    if repo.remote is None:
        return None
    from toolkit.s3repo import S3Remote, upload_summary

    if not isinstance(repo.remote, S3Remote):
        return None
    return repo.remote.uploads.to_json() | {"url": repo.remote.url}, upload_summary(repo.remote)


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
    default=MAX_AGE_HOURS,
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
    from toolkit.ops.status import render_status_text
    from toolkit.ops.status import status as status_job

    config = c.config(required=False)
    with c.open() as repo:
        report = status_job(repo, config, datetime.now(UTC), max_age_hours)
    c.emit(report.to_json(), render_status_text(report))
    if not report.ok:
        sys.exit(1)


@cli.command("report")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write the HTML page to FILE (replaced atomically). Required unless --json.",
)
@click.option(
    "--days",
    type=click.IntRange(1),
    default=90,
    show_default=True,
    metavar="N",
    help="History shown: the last N days.",
)
@pass_ctx
def report_cmd(c: Ctx, output: Path | None, days: int) -> None:
    """Write a self-contained HTML report on protection, growth, verification and recovery time.

    One page with no script and nothing fetched from the network: per site the
    protected and unprotected volumes (as toolkit status sees them) with each
    volume's last good capture, repository growth and deduplication, the
    versions of every volume on a timeline, verify and drill runs, and the
    recovery time of drills (seconds per GiB). With --json the same data is
    printed as JSON (and the page is written too when --output is given).
    Exit 0 when written, whatever it shows: alert on toolkit status.

    \b
    Example:
      toolkit --repo /backup/appstacks report --output /var/www/appstacks/report.html
      toolkit report --days 30 --json
    """
    from toolkit.ops.report import render_html, write_report
    from toolkit.ops.report import report as report_job

    if output is None and not c.json:
        raise click.UsageError("give --output FILE for the HTML page, or --json")
    config = c.config(required=False)
    with c.open() as repo:
        rep = report_job(repo, config, datetime.now(UTC), days)
    if output is not None:
        write_report(output, render_html(rep))
    data = rep.to_json()
    volumes = sum(len(s["volumes"]) for s in data["sites"])
    unprotected = sum(s["unprotected"] for s in data["sites"])
    c.emit(data, f"wrote {output}: {volumes} volumes, {unprotected} unprotected, {len(rep.runs)} verify/drill runs")


@cli.command()
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0.1),
    default=CHECK_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Per connection and request; an endpoint gets at most three times this in all.",
)
@pass_ctx
def check(c: Ctx, timeout_s: float) -> None:
    """Test every endpoint of the configuration; show what fails and how to fix it; exit 1 on a failure.

    Per site: the App Volumes Manager (version, login), vCenter (login, its
    datastores), every datastore through its transport (opened, listed, its
    App Volumes volumes counted), the SSH host key of each SFTP datastore
    (known, unknown or changed) and the staging datastore of each vSAN
    datastore (a file written there and removed); then the repository (a file
    created and removed in its tmp/, and who holds its lock) and, when it is
    encrypted, whether the passphrase the scheduled jobs get (configuration or
    environment, never a prompt) opens it. Changes nothing
    else; never shows a secret. Warnings (a held lock, TLS verification off, no
    App Volumes volume found) exit 0.

    \b
    Example:
      toolkit check
      toolkit --json check --timeout 5
    """
    from toolkit.ops.endpoints import check_endpoints, rows_text

    config = c.config(required=c.repo_path is None)
    repository = c.repo_path or (config.repository if config is not None else None)
    report = check_endpoints(config, repository, timeout_s=timeout_s, allow_other_owner=c.allow_other_owner)
    if repository is not None and any(r.component == "repository" and r.status != "fail" for r in report.rows):
        report.rows += _check_passphrase(c, repository, config)
    text = table(rows_text(report.rows), ["COMPONENT", "TARGET", "STATUS", "DETAIL"])
    text += f"\n{report.count('fail')} failed, {report.count('warn')} warning(s), {report.count('ok')} ok"
    fixes = [f"  {r.component} {r.target}: {r.fix}" for r in report.rows if r.fix and r.status != "ok"]
    if fixes:
        text += "\n\nto fix:\n" + "\n".join(fixes)
    c.emit(report.to_json(), text)
    if not report.ok:
        sys.exit(1)


def _check_passphrase(c: Ctx, repository: Path, config: Config | None) -> list[CheckRow]:
    """An encrypted repository opens with the passphrase the scheduled jobs get (never a prompt: they have none)."""
    from toolkit.ops.endpoints import CheckRow

    shown = remote_url(repository) or str(repository)
    try:
        local = c.local_root(repository)
        repo_config = read_config(local)
        if repo_config.encryption is None:
            return []
        file, command = c.passphrase_file, c.passphrase_command
        source = passphrase_source(file, command, config)
        if source is None:
            return [
                CheckRow(
                    "passphrase",
                    shown,
                    "fail",
                    "the repository is encrypted and no passphrase source is configured",
                    "set passphrase_file or passphrase_command in the configuration (or TOOLKIT_PASSPHRASE "
                    "in /etc/appstack-toolkit/env, or in NAME.env there for schedule --name NAME): scheduled jobs "
                    "cannot be asked",
                )
            ]
        _keys, slot = unlock_keys(local, repo_config.id, repo_config.encryption, source.get())
    except Error as exc:
        return [CheckRow("passphrase", shown, "fail", str(exc), exc.hint_text)]
    return [CheckRow("passphrase", shown, "ok", f"opens key slot {slot}")]


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
@click.option(
    "--name",
    metavar="NAME",
    help="Name the units appstack-toolkit-NAME-JOB (cron: appstack-toolkit-NAME), so one host can run the timers "
    "of several configurations (default: appstack-toolkit-JOB); their jobs also read /etc/appstack-toolkit/NAME.env "
    "after the shared env file.",
)
@pass_ctx
def schedule(c: Ctx, install_dir: Path | None, user: str | None, cron: bool, name: str | None) -> None:
    """Timers for the nightly snapshot, weekly verify and weekly prune (systemd, or cron).

    Nightly at 02:30 (plus up to 15 min): snapshot, at idle CPU and I/O
    priority. Sundays at 04:00: verify --read-data-subset 15, except on the
    first Sunday of the month: verify --read-data. Saturdays at 12:00 (plus up
    to 30 min), when the configuration has a [retention] table: prune with its
    keep_* values as options (--keep-daily 14 …); without one no prune job is
    written, and the output says so. Each job runs this toolkit with the
    current --config and --repo as --user, reads secrets (KEY=value lines)
    from /etc/appstack-toolkit/env and, with --name NAME, then from
    /etc/appstack-toolkit/NAME.env, whose values win (each file when it
    exists), and runs at boot when the machine was off at the scheduled time.
    A non-zero exit leaves the unit failed, so exit 1 (problems found) reaches
    systemctl --failed and monitoring. Run it again after changing [retention].

    \b
    Example:
      toolkit --config /etc/appstack-toolkit/config.toml schedule --user appstack
      toolkit --config /etc/appstack-toolkit/config.toml schedule --user appstack --install /etc/systemd/system
      systemctl daemon-reload
      systemctl enable --now appstack-toolkit-snapshot.timer appstack-toolkit-verify.timer \\
        appstack-toolkit-verify-data.timer appstack-toolkit-prune.timer
      toolkit --config /etc/appstack-toolkit/dc2.toml schedule --name dc2 --user appstack \\
        --install /etc/systemd/system          # appstack-toolkit-dc2-snapshot.timer, ...
    """
    config = c.config()  # the jobs need it; better to fail now than every night
    if config is None or not config.sites:
        raise ScheduleInvalid(detail="the configuration has no [sites.NAME], so the nightly snapshot has nothing to do")
    url = remote_url(c.repo())
    repository = None if url is not None else c.repo().expanduser().absolute()
    config_path = config.path.expanduser().absolute()
    run_as = user or (repository_owner(repository) if repository is not None else None) or getpass.getuser()
    check_user(run_as, repository)
    command = toolkit_command(sys.argv[0], sys.executable)
    spec = Schedule(command, config_path, run_as, repository, repository_url=url, name=name, retention=config.retention)
    files = [cron_file(spec)] if cron else systemd_units(spec)
    written = install(files, install_dir) if install_dir is not None else []
    timers = timer_names(files)
    no_prune = (
        None
        if config.retention is not None
        else f"no prune job: {config_path} has no [retention] (see docs/configuration.md); prune by hand"
    )
    if not written:
        text = format_units(files) + (f"\n# {no_prune}" if no_prune else "")
    else:
        text = "\n".join(f"wrote {p}" for p in written) + (f"\n{no_prune}" if no_prune else "")
        if cron:
            text += f"\nnext: install -d -o {run_as} -m 0750 /var/log/appstack-toolkit"
        else:
            text += f"\nnext: systemctl daemon-reload && systemctl enable --now {' '.join(timers)}"
        if name is not None:  # a file of its own to create; the unnamed schedule's is the one the guides set up
            text += "\n" + _env_advice(spec, cron)
    c.emit(
        {
            "user": run_as,
            "name": name,
            "env_files": [str(p) for p in spec.env_files],
            "jobs": [{"name": job.name, "args": list(job.args)} for job in spec.jobs],
            "files": [{"name": f.name, "text": f.text} for f in files],
            "installed": [str(p) for p in written],
            "timers": timers,
            "warnings": [no_prune] if no_prune else [],
        },
        text,
    )


def _env_advice(spec: Schedule, cron: bool) -> str:
    """Where the jobs find their secrets, and who must be able to read those files."""
    # systemd reads EnvironmentFile= as root; a cron job sources the files as its user and skips one it cannot read.
    owner = f", owned by {spec.user}: cron skips a file the user cannot read" if cron else ""
    files = ", then ".join(map(str, spec.env_files))
    return f"secrets: {files} (KEY=value lines, each read when it exists, a later file's value wins; mode 0600{owner})"


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
@click.option(
    "--to",
    "drill_to",
    metavar="DEST",
    help="With --drill: restore onto this configured datastore or directory as drill-NAME-TIME, then remove it.",
)
@click.option(
    "--register",
    "drill_register",
    is_flag=True,
    help="With --drill --to a configured datastore: also import each drilled copy into the manager, then delete it.",
)
@click.option("--strict", is_flag=True, help="Exit 1 on a storage-health warning (a read that failed once) too.")
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
    drill_to: str | None,
    drill_register: bool,
    live: bool,
    sources: tuple[str, ...],
    rehash: bool,
    strict: bool,
) -> None:
    """Prove every stored version can be reassembled; exit 1 naming what is damaged.

    Levels (the report says which ran): metadata (default: documents, packs
    present, every version's manifest and digest), data (--read-data: every
    byte; --read-data-subset / --max-duration: the least recently verified part,
    so successive runs cover everything), restore-path (--volume [--as-of]:
    exactly the chunks that restore would read, reassembled and digested).
    drill (--drill: restore a rotating sample, or --all, into scratch space,
    check the VMDK structure, qemu-img check when installed and the file
    system signature, always clean up, record seconds per GiB; with --to, onto
    a configured datastore through its transport, under a drill name in a
    toolkit-drill-TIME folder beside the volume's, and with --register imported
    into the site's manager and deleted from it again, also after a failure).
    Every run is recorded; --history shows them, --coverage DAYS tells how much
    of the stored data was read and found sound within DAYS days.
    A chunk or pack that fails its check once and reads sound on a second read
    is a storage-health warning, not damage: exit 0 unless --strict.

    \b
    Example:
      toolkit --repo /backup/appstacks verify --read-data
      toolkit --repo /backup/appstacks verify --read-data-subset 10
      toolkit --repo /backup/appstacks verify --max-duration 3600 --coverage 30
      toolkit --repo /backup/appstacks verify --volume 'Office*' --as-of 2026-11-20T03:00
      toolkit --repo /backup/appstacks verify --drill --sample 2
      toolkit verify --drill --sample 1 --to dc1/appstacks-nfs --register
      toolkit verify --live --rehash
      toolkit --repo /backup/appstacks verify --history
    """
    if sum(bool(x) for x in (read_data, read_data_subset is not None, volumes and not drill, drill)) > 1:
        raise click.UsageError("use one of --read-data, --read-data-subset, --volume, --drill")
    if as_of and not (volumes or drill):
        raise click.UsageError("--as-of needs --volume or --drill")
    if (drill_to or drill_register) and not drill:
        raise click.UsageError("--to and --register go with --drill")
    if drill_register and not drill_to:
        raise click.UsageError("--register needs --to a configured datastore")
    if drill_to and scratch:
        raise click.UsageError("use one of --scratch and --to")
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
        run_drill(c, as_of, list(volumes), None if drill_all else sample, scratch, drill_to, drill_register)
        return
    if live:
        run_live(c, list(sources), rehash)
        return
    progress = c.progress("verify")
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
            progress("plan", {"bytes": sum({f.manifest_id: f.size for p in plan for f in p.files}.values())})
            report = verify_files(repo, files, progress=lambda n: progress("bytes", {"n": n}))
            scope = f"volumes {' '.join(volumes)} as of {when[:19]}"
        else:
            if read_data:
                progress("plan", {"bytes": sum(size for _pack, size, _count, _at in repo.index.packs())})
            report = verify_repo(
                repo,
                read_data=read_data,
                subset_pct=read_data_subset,
                max_duration_s=max_duration,
                progress=lambda n: progress("bytes", {"n": n}),
                open_pack=repo.pack_opener(),  # object storage: the stored copy, downloaded anew
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
                "detail": {
                    "problems": [p.message for p in report.problems][:50],
                    "storage_health": [w.message for w in report.storage_health][:50],
                },
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
    progress.finish(report.ok, warnings=report.warnings)
    lines = [
        f"verify ({report.level}): {report.snapshots} snapshots, {report.versions} versions, "
        f"{report.manifests} files, {report.packs_read}/{report.packs_total} packs read "
        f"({human_bytes(report.bytes_read)}, {report.chunks_read} chunks) in {duration:.1f} s"
    ]
    for w in report.warnings:
        lines.append(f"warning: {w}")
    for h in report.storage_health:
        lines.append(f"warning: storage health: {h.message}")
    for p in report.problems:
        lines.append(f"LOST: {p.message}" if p.kind == "lost" else f"DAMAGED {p.kind}: {p.message}")
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
    if report.storage_health:
        lines.append(
            f"{len(report.storage_health)} storage-health warning(s): a read returned wrong bytes once; "
            "check the disks and the path to the repository" + (" (--strict: exit 1)" if strict else "")
        )
    c.emit(report.to_json() | {"coverage": cover, "duration_s": round(duration, 3)}, "\n".join(lines))
    if not report.ok or (strict and report.storage_health):
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


def run_drill(
    c: Ctx,
    as_of: str | None,
    patterns: list[str],
    sample: int | None,
    scratch: Path | None,
    dest: str | None = None,
    register: bool = False,
) -> None:
    from toolkit.ops.drill import DrillTarget, choose
    from toolkit.ops.drill import drill as drill_job
    from toolkit.ops.register import NoManager

    started_at = datetime.now(UTC)
    with contextlib.ExitStack() as stack, c.open(readonly=False) as repo:
        target = None
        if dest is not None:
            where = resolve_destination(c, dest, stack)
            if register and where.manager is None:
                raise NoManager(site=where.site or dest)
            target = DrillTarget(where.transport, where.manager if register else None, where.datastore)
        when = parse_as_of(as_of, repo) if as_of else started_at.isoformat(timespec="microseconds")
        keys = choose(repo, when, sample, patterns)
        results = drill_job(repo, when, keys, scratch=scratch, target=target)
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
    text += "".join(f"\nnote: {r.volume}: {n}" for r in results for n in r.notes)
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
@click.option(
    "--rename",
    metavar="TEMPLATE",
    help="Write each volume beside the live one under a new name: {name} is its name, {date} its capture date.",
)
@click.option(
    "--restore-assignments",
    is_flag=True,
    help="With --register: create again the assignments recorded with each version.",
)
@click.option(
    "--verify-landed",
    type=click.Choice(["written", "readback"]),
    default=None,
    help="Into a directory: check the bytes as handed to the storage (and a few blocks read back), "
    "or read every file back from the storage after fsync (a second pass over the disk). "
    "Default: readback with --register (the manager imports only what was read back), else written.",
)
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
    rename: str | None,
    restore_assignments: bool,
    verify_landed: str | None,
) -> None:
    """Restore each volume as it was at --as-of onto a datastore or into a directory.

    Each volume is written at its datastore-relative path, through a
    temporary name, checked against the digest recorded at capture, then
    renamed. Zero chunks stay holes. A re-run skips files already in place.
    With --to a configured datastore, volumes the manager reports attached to
    desktops are never replaced, and --register imports the restored volumes
    and checks the manager lists them again with their recorded GUID;
    --restore-assignments then assigns them as they were at capture.
    --rename writes a volume beside the live one, in the same folder, as a
    volume of its own: new file names (the descriptor names the new extents),
    sidecars carrying the new name and a new GUID; rewritten files are checked
    against the digest of their new content, data extents against the
    recorded one. The plan says which versions were captured without sidecars
    (the manager may import those as Legacy).

    \b
    Example:
      toolkit --repo /backup/appstacks restore --as-of 2026-11-20T03:00 --to /mnt/restore
      toolkit --repo /backup/appstacks restore --as-of 2026-11-20 --volume 'Office*' --to /mnt/restore --dry-run
      toolkit restore --as-of 2026-11-20T03:00 --volume 'Office 2016' --to dc1/appstacks-nfs --register
      toolkit restore --as-of 2026-11-20 --volume 'Office 2016' --to dc1/appstacks-nfs --register --restore-assignments
      toolkit restore --as-of 2026-11-20 --volume 'Office 2016' --to dc1/appstacks-nfs --rename '{name} restored'
      toolkit restore --previous 1 --volume 'Office 2016' --to /mnt/restore
    """
    if as_of is None and previous is None:
        raise click.UsageError("give --as-of TIME or --previous N")
    if restore_assignments and not register:
        raise click.UsageError("--restore-assignments needs --register")
    from toolkit.ops.register import NoManager, in_use
    from toolkit.ops.register import register as register_volumes
    from toolkit.ops.restore import rename_template

    renamer = rename_template(rename) if rename is not None else None

    stack = contextlib.ExitStack()
    target = resolve_destination(c, dest, stack)
    if register and target.manager is None:
        raise NoManager(site=target.site or dest)
    protected: dict[str, str] = {}
    if target.manager is not None and target.datastore is not None:
        protected = in_use(target.manager.inventory(), target.datastore)
    progress = c.progress("restore")
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
            rename=renamer,
            event=progress,
            vsan=target.vsan,
            verify_landed=verify_landed or ("readback" if register else "written"),
        )
    if register and not dry_run and target.manager is not None and target.datastore is not None:
        register_volumes(target.manager, target.datastore, report.volumes, restore_assignments=restore_assignments)
    progress.finish(report.ok)
    rows = [
        [
            v["key"],
            v["status"],
            v.get("captured_at", "")[:19],
            human_bytes(v.get("size", 0)),
            v.get("error")
            or v.get("register_error")
            or v.get("assignments_error")
            or v.get("note")
            or v.get("reason")
            or "",
        ]
        for v in report.volumes
    ]
    text = table(rows, ["VOLUME", "STATUS", "CAPTURED (UTC)", "SIZE", "NOTE"])
    text += "".join(restore_details(v) for v in report.volumes)
    if not dry_run:
        text += f"\nwrote {human_bytes(report.bytes_written)} in {report.duration_s:.1f} s"
    c.emit(report.to_json(), text)
    if not report.ok:
        sys.exit(1)


def restore_details(v: dict[str, Any]) -> str:
    """Lines under the restore table: new names, sidecar warnings, assignments created."""
    lines = []
    if v.get("renamed_from"):
        guid = f" with GUID {v['guid']}" if v.get("guid") else ""
        lines.append(f"{v['key']}: written as {v['path']} ({v['name']!r}{guid})")
    lines += [f"warning: {v['key']}: {w}" for w in v.get("warnings") or []]
    for a in v.get("assignments") or []:
        detail = f" ({a['detail']})" if a.get("detail") else ""
        lines.append(f"{v['key']}: assignment {a['who']}: {a['status']}{detail}")
    return "".join("\n" + line for line in lines)


@cli.command("switch")
@click.option("--from", "source", required=True, metavar="NAME", help="The damaged volume: its name or DATASTORE/PATH.")
@click.option("--to", "target", required=True, metavar="NAME", help="The volume desktops get instead (restored).")
@click.option(
    "--site",
    metavar="SITE",
    help="The configured site whose manager holds both volumes (default: the only site with a manager).",
)
@click.option("--dry-run", is_flag=True, help="Show what would move; change nothing.")
@pass_ctx
def switch_cmd(c: Ctx, source: str, target: str, site: str | None, dry_run: bool) -> None:
    """Move desktops from a damaged AppStack or package to its restored twin.

    It works through the site's App Volumes Manager. 2.x: each entity
    assigned to the FROM AppStack is assigned to the TO AppStack, then unassigned from
    FROM; nothing is taken from FROM unless every assignment was given to TO
    first. 4.x: the manager takes one assignment per entity and application
    and has no update, so each assignment pinned to the FROM package is
    deleted, then created pinned to the TO package, and put back on FROM at
    once if the manager refuses it; then the application's CURRENT marker
    moves to TO when it points at FROM (assignments through the marker
    follow it). Both must be AppStacks, or packages of one application. The
    output says what moved and what did not, and the command exits 1 if
    anything failed.
    Desktops that have FROM attached get TO at their next logon.

    \b
    Example:
      toolkit switch --from 'Office 2016' --to 'Office 2016 restored' --dry-run
      toolkit switch --site dc1 --from 'Office 2016' --to 'Office 2016 restored'
    """
    from toolkit.ops.switch import switch as switch_job
    from toolkit.sites import manager_client, manager_site

    where, manager = manager_site(c.config(), site)
    client = manager_client(manager)
    try:
        report = switch_job(client, where.name, source, target, dry_run=dry_run)
    finally:
        with contextlib.suppress(Error):
            client.logout()
    c.emit(report.to_json(), switch_text(report.to_json()))
    if not report.ok:
        sys.exit(1)


def switch_text(r: dict[str, Any]) -> str:
    """The switch report as a table of assignments, then the marker, notes and outcome."""
    f, t = r["from"], r["to"]
    lines = [f"site {r['site']} (App Volumes Manager {r['flavour']}): from {f['name']!r} (id {f['id']}, {f['key']})"]
    lines.append(f"  to {t['name']!r} (id {t['id']}, {t['key']})")
    rows = [[a["who"], a["via"], a["to"], a["from"], a["status"], a["detail"]] for a in r["assignments"]]
    headers = ["ASSIGNMENT", "VIA", "TO", "FROM", "STATUS", "DETAIL"]
    lines.append(table(rows, headers) if rows else f"no assignment of {f['name']!r} left to move")
    if r["marker"]:
        lines.append(f"CURRENT marker: {r['marker']['detail']}")
    lines += [f"note: {n}" for n in r["notes"]]
    if r["dry_run"]:
        lines.append("dry run: nothing was changed")
    elif not r["ok"]:
        lines.append(
            "not finished: what failed is listed above; FROM keeps every assignment not moved; "
            "run the same command again to finish"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _copy_destination(c: Ctx, dest: Path, chunk_size: int, dry_run: bool) -> Iterator[Repository]:
    """The repository to copy into; a missing one is named with the init line that makes a fitting one."""
    from toolkit.ops.copy import CopyDestinationMissing

    with contextlib.ExitStack() as stack:
        try:
            dst = stack.enter_context(c.open(readonly=dry_run, root=dest))
        except StoreNotFound:
            size = f"{chunk_size >> 20}M" if chunk_size >= 1 << 20 else f"{chunk_size >> 10}K"
            raise CopyDestinationMissing(path=remote_url(dest) or dest, chunk_size=size) from None
        yield dst


@cli.command("copy")
@click.option("--from", "source", type=REPO_TYPE, metavar="REPO", help="The repository to copy from (default: --repo).")
@click.option("--to", "dest", type=REPO_TYPE, required=True, metavar="REPO", help="The repository to copy into.")
@click.option("--as-of", "as_of", help="Only snapshots taken at or before this time (ISO 8601) or snapshot id.")
@click.option("--volume", "volumes", multiple=True, metavar="GLOB", help="Only volumes whose name, path or key match.")
@click.option("--dry-run", is_flag=True, help="Show what would be copied and sent; write nothing.")
@click.option(
    "--from-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Encrypted source: its passphrase is in FILE (default: as for --repo).",
)
@click.option("--from-passphrase-command", metavar="CMD", help="Encrypted source: its passphrase is what CMD prints.")
@click.option(
    "--to-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Encrypted destination: its passphrase is in FILE (default: as for --repo).",
)
@click.option(
    "--to-passphrase-command", metavar="CMD", help="Encrypted destination: its passphrase is what CMD prints."
)
@pass_ctx
def copy_cmd(
    c: Ctx,
    source: Path | None,
    dest: Path,
    as_of: str | None,
    volumes: tuple[str, ...],
    dry_run: bool,
    from_passphrase_file: Path | None,
    from_passphrase_command: str | None,
    to_passphrase_file: Path | None,
    to_passphrase_command: str | None,
) -> None:
    """Copy the snapshots another repository lacks into it: an off-site copy.

    Only chunks the destination does not hold are read, checked and sent;
    a run after the nightly snapshot sends what that snapshot added. The
    destination is a repository made with init, with the same chunk size; it
    may be encrypted when the source is not, or under another passphrase
    (chunks are then stored again under its own keys). A damaged source chunk
    fails that volume (exit 1); nothing damaged is copied. A copy holds the
    destination's writer lock; an interrupted one is resumed by running it
    again, without sending again what it had stored.

    \b
    Example:
      toolkit --repo /backup/appstacks copy --to /mnt/dc2-backup/dc1-copy
      toolkit copy --from /backup/appstacks --to /mnt/dc2-backup/dc1-copy --as-of 2026-11-20T03:00 --dry-run
    """
    from toolkit.ops.copy import CopyToItself
    from toolkit.ops.copy import copy as copy_job

    src_root = source or c.repo()
    if Path(src_root).expanduser().resolve() == Path(dest).expanduser().resolve():
        raise CopyToItself(path=dest)
    for root, file, command in (
        (src_root, from_passphrase_file, from_passphrase_command),
        (dest, to_passphrase_file, to_passphrase_command),
    ):
        if file is not None or command is not None:
            c.passphrase_sources[root] = (file, command)
    progress = c.progress("copy")
    with c.open(root=src_root) as src, _copy_destination(c, dest, src.config.chunk_size, dry_run) as dst:
        when = parse_as_of(as_of, src) if as_of else None
        with contextlib.ExitStack() as stack:
            if not dry_run:
                stack.enter_context(dst.writing("copy"))
            report = copy_job(src, dst, as_of=when, patterns=list(volumes), dry_run=dry_run, event=progress)
        where_from, where_to = src.location, dst.location
    progress.finish(report.ok, warnings=report.warnings)
    st = report.stats
    verb = "would copy" if dry_run else "copied"
    copied = report.count("planned") if dry_run else report.count("copied") + report.count("partial")
    text = (
        f"{verb} {copied} snapshot(s) from {where_from} to {where_to}; {report.count('present')} already there\n"
        f"{'would send' if dry_run else 'sent'} {st.chunks_sent} chunk(s), {human_bytes(st.bytes_sent)} "
        f"({human_bytes(st.raw_bytes_sent)} of data); {st.chunks_present} chunk(s) already there, "
        f"{st.files_present} file(s) already whole; {report.duration_s:.1f} s"
    )
    for p in report.problems:
        where = f"{p['volume']} in snapshot {p['snapshot'][:12]}" if p["volume"] else f"snapshot {p['snapshot'][:12]}"
        text += f"\nfailed: {where}: {p['error']}"
    for w in report.warnings:
        text += f"\nwarning: {w}"
    c.emit(report.to_json() | {"from": where_from, "to": where_to}, text)
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
    those mostly unreferenced. Times are bucketed in UTC. Without any --keep-*
    option the configuration's [retention] is the policy (what the scheduled
    prune job runs).

    \b
    Example:
      toolkit --repo /backup/appstacks prune --keep-daily 14 --keep-weekly 8 --keep-monthly 12 --dry-run
      toolkit --config /etc/appstack-toolkit/config.toml prune --dry-run
    """
    from datetime import UTC, datetime

    from catalog.prune import Policy
    from catalog.prune import prune as prune_repo

    policy = Policy(keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_deleted_days)
    source = "options"
    if policy.empty and keep_deleted_days is None:
        config = c.config(required=False)
        if config is not None and config.retention is not None:
            r = config.retention
            counts = (r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_yearly)
            policy = Policy(*counts, r.keep_deleted_days)
            source = f"[retention] of {config.path}"
    progress = c.progress("prune")
    with c.open(readonly=False) as repo, repo.writing("prune"):
        report = prune_repo(repo, policy, dry_run=dry_run, now=datetime.now(UTC), progress=progress)
    progress.finish()
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {len(report.removed)} snapshot(s), kept {len(report.kept)} (policy from {source})"]
    lines += [f"  keep {sid[:12]}: {', '.join(why)}" for sid, why in sorted(report.kept.items())]
    lines += [f"  {verb.split()[-1]} {sid[:12]}" for sid in report.removed]
    lines.append(
        f"{'would free' if dry_run else 'freed'} {human_bytes(report.bytes_freed)} "
        f"({report.packs_deleted} pack(s) deleted, {report.packs_repacked} repacked)"
    )
    if report.locked:
        lines.append(f"kept under object lock ({len(report.locked)}), removed by a prune after the date shown:")
        lines += [f"  {x['kind']} {x['id'][:12]} until {x['until']}" for x in report.locked]
    c.emit({**report.to_json(), "policy_from": source}, "\n".join(lines))


@cli.command()
@click.option(
    "--rebuild-catalog",
    is_flag=True,
    help="Rebuild catalog.db from packs, snapshot documents and quarantine notes.",
)
@click.option("--salvage", is_flag=True, help="Check packs and salvage damaged ones (what repair does by default).")
@click.option("--pack", "pack_ids", multiple=True, metavar="PACK_ID", help="Check only this pack (8+ hex digits).")
@click.option("--dry-run", is_flag=True, help="Say what salvage would recover and lose; change nothing.")
@pass_ctx
def repair(c: Ctx, rebuild_catalog: bool, salvage: bool, pack_ids: tuple[str, ...], dry_run: bool) -> None:
    """Salvage damaged packs, or rebuild the catalog; exit 1 when stored data is lost.

    Salvage (the default) reads every pack, or those given with --pack. From a
    damaged one (missing, torn, a record failing its check) it recovers every
    record that still proves its chunk id into new packs, moves the damaged
    file to quarantine/ (never deleting it) and marks the rest lost. It lists
    every version that needs a lost chunk, and exits 1 when there is one. The
    next snapshot reads such volumes again and stores the lost chunks from the
    datastores, which heals every version that uses them.

    --rebuild-catalog moves catalog.db aside and rebuilds it from the packs,
    snapshot documents and quarantine notes; with --salvage it does both.

    \b
    Example:
      toolkit --repo /backup/appstacks repair --dry-run
      toolkit --repo /backup/appstacks repair
      toolkit --repo /backup/appstacks repair --pack 3fa2c1d09b7e
      toolkit --repo /backup/appstacks repair --rebuild-catalog
    """
    from catalog.rebuild import rebuild_catalog as rebuild
    from catalog.salvage import salvage as salvage_job

    if rebuild_catalog and dry_run:
        raise click.UsageError("--dry-run applies to salvage; a rebuild keeps the old catalog beside the new one")
    salvage = salvage or bool(pack_ids) or dry_run or not rebuild_catalog
    url = remote_url(c.repo())
    if url is not None and salvage:
        from toolkit.s3repo import RemoteUnsupported

        raise RemoteUnsupported(command="repair --salvage", url=url)
    lines: list[str] = []
    rebuilt = None
    if rebuild_catalog:
        with unlocked(c.keys()):  # the rebuild opens the repository by its path alone
            if url is not None:  # this host's cache of it, rebuilt from the bucket
                access = c.s3(url)
                rebuilt = rebuild(access.root, remote=access.remote, cache_bytes=c.cache_bytes)
            else:
                rebuilt = rebuild(c.repo())
        lines.append(
            f"catalog rebuilt: {rebuilt['packs']} packs, {rebuilt['snapshots']} snapshots, "
            f"{rebuilt['quarantined_packs']} quarantined pack(s), {rebuilt['lost_chunks']} lost chunk(s)"
            + (f" (old catalog kept as {rebuilt['old_catalog']})" if rebuilt.get("old_catalog") else "")
        )
        if not salvage:
            if rebuilt["lost_chunks"] and url is not None:
                lines.append(
                    "warning: stored versions need chunks no pack holds; the next snapshot stores them again "
                    "from volumes still on their datastores (toolkit verify lists them)"
                )
            elif rebuilt["lost_chunks"]:
                lines.append("warning: stored versions need chunks no pack holds; run: toolkit repair")
            c.emit(rebuilt, "\n".join(lines))
            return
    progress = c.progress()
    with c.open(readonly=False) as repo, repo.writing("repair --salvage"):
        report = salvage_job(
            repo, pack_ids=list(pack_ids), dry_run=dry_run, progress=lambda n: progress("bytes", {"n": n})
        )
    progress.finish()
    lines += render_salvage(report)
    c.emit(report.to_json() | {"rebuild": rebuilt}, "\n".join(lines))
    if not report.ok:
        sys.exit(1)


def render_salvage(report: SalvageReport) -> list[str]:
    would = "would be " if report.dry_run else ""
    lines = [
        f"salvage{' (dry run)' if report.dry_run else ''}: {report.packs_checked} pack(s) checked "
        f"({human_bytes(report.bytes_read)} read), {len(report.damaged)} damaged"
    ]
    lines += [f"finished moving pack {pid[:12]} to quarantine/ (a repair was interrupted)" for pid in report.finished]
    for d in report.damaged:
        lines.append(f"DAMAGED pack {d.pack_id[:12]}: {d.reason}")
        lines.append(
            f"  {d.chunks_recovered} chunk(s) {would}recovered ({human_bytes(d.bytes_recovered)}), "
            f"{d.chunks_elsewhere} held by sound packs, {len(d.chunks_lost)} lost"
        )
        if d.quarantined:
            lines.append(f"  moved to {d.quarantined}")
    lines += [f"warning: storage health: {w.message}" for w in report.storage_health]
    if report.new_packs:
        lines.append(f"{len(report.new_packs)} new pack(s) written")
    for f in report.lost_files:
        what = "the whole file (its manifest is lost)" if f.manifest_lost else f"{f.chunks} chunk(s)"
        lines.append(
            f"LOST {f.volume} in snapshot {f.snapshot_id[:12]} ({f.created_at[:19]}): {f.path}: {what}, "
            f"{human_bytes(f.bytes)}"
        )
    if report.ok:
        lines.append("ok: every stored version has all its chunks")
    else:
        versions = len({(f.volume, f.snapshot_id) for f in report.lost_files})
        lines.append(
            f"{report.lost_chunks} chunk(s) {would}lost, needed by {versions} version(s); the next snapshot stores "
            "them again from volumes still on their datastores, then: toolkit verify --read-data"
        )
    return lines


@cli.command()
@click.option("--force", is_flag=True, help="Remove the lock even if its holder may still run (another host).")
@click.option(
    "--older-than",
    type=click.FloatRange(0, min_open=True),
    metavar="HOURS",
    help="Also treat a lock taken more than HOURS ago as stale, however recently its holder refreshed it.",
)
@pass_ctx
def unlock(c: Ctx, force: bool, older_than: float | None) -> None:
    """Remove a writer lock left by a job that died.

    A running job writes its lock again every 5 minutes. A lock is stale, and
    removed, when its process is gone from this host, or when it is another
    host's and was not refreshed for 45 minutes (the next writer also takes
    over such a lock by itself, with a warning). --older-than HOURS also
    removes a lock taken more than HOURS ago, --force any lock. A live holder
    keeps its lock (exit 3, naming it).

    \b
    Example:
      toolkit --repo /backup/appstacks unlock
      toolkit --repo /backup/appstacks unlock --older-than 24
    """
    older_than_s = older_than * 3600 if older_than else None
    url = remote_url(c.repo())
    if url is not None:
        held = break_remote_lock(c.s3(url).remote, force=force, older_than_s=older_than_s)
    else:
        held = break_lock(c.repo(), force=force, older_than_s=older_than_s)
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
    simulator imports them and assigns two of them to a sample user and groups
    (so restore --restore-assignments and switch have something to move).
    With --sshd the site reaches them over SFTP (as an ESXi host), else with
    --vcsim over datastore HTTP, else as local mounts.
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
def key() -> None:
    """The passphrase key slots of an encrypted repository."""


def _key_slots(c: Ctx) -> tuple[Path, str, list[Any]]:
    """(root, repository id, slots) of an encrypted repository; NotEncrypted otherwise."""
    from catalog.keys import read_slots

    root = c.local_root(c.repo())  # an s3:// repository's config and keys have a copy in this host's cache
    config = read_config(root)
    if config.encryption is None:
        raise NotEncrypted(path=c.repo())
    return root, config.id, read_slots(root, config.id)


def _unlocked_slot(c: Ctx) -> tuple[Path, RepoKeys, str]:
    root, _repo_id, _slots = _key_slots(c)  # NotEncrypted before any passphrase is asked
    opened = c.unlock()
    if opened is None:  # read_config said encrypted a moment ago
        raise NotEncrypted(path=c.repo())
    return root, opened[0], opened[1]


@contextlib.contextmanager
def _changing_keys(c: Ctx) -> Iterator[None]:
    """An s3:// repository's slots change in this host's cache under the bucket's writer lock, then are uploaded.

    (The slots of a directory repository are written under its own writer lock by catalog.keys.)
    """
    from catalog.keys import KEYS_FILE

    url = remote_url(c.repo())
    if url is None:
        yield
        return
    access = c.s3(url)
    with remote_writer_lock(access.remote, "key") as held:
        yield
        held.check()
        access.remote.store.put_bytes(KEYS_FILE, (access.root / KEYS_FILE).read_bytes())


def _new_passphrase(c: Ctx, root: Path, file: Path | None, command: str | None) -> str:
    from toolkit.config import Secret

    if file is not None:
        return Secret("new repository passphrase", file=file.expanduser()).get()
    if command is not None:
        return Secret("new repository passphrase", command=command).get()
    return c.passphrase(root, new=True, confirm=True)


_new_passphrase_file = click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the new passphrase from FILE (mode 0600); else TOOLKIT_NEW_PASSPHRASE, or asked on a terminal.",
)
_new_passphrase_command = click.option(
    "--new-passphrase-command", metavar="CMD", help="The new passphrase is what CMD prints (run without a shell)."
)


@key.command("list")
@pass_ctx
def key_list(c: Ctx) -> None:
    """List the key slots (no passphrase needed: the slots hold only wrapped keys).

    \b
    Example:
      toolkit --repo /backup/appstacks key list
    """
    _root, _repo_id, slots = _key_slots(c)
    rows = [[s.id, s.created_at, s.cipher, s.kdf.describe()] for s in slots]
    data = [{"id": s.id, "created_at": s.created_at, "cipher": s.cipher, "kdf": s.kdf.to_json()} for s in slots]
    c.emit({"slots": data}, table(rows, ["SLOT", "CREATED (UTC)", "CIPHER", "KEY DERIVATION"]))


@key.command("add")
@_new_passphrase_file
@_new_passphrase_command
@pass_ctx
def key_add(c: Ctx, new_passphrase_file: Path | None, new_passphrase_command: str | None) -> None:
    """Add a key slot: one more passphrase that opens the repository.

    The current passphrase (--passphrase-file, --passphrase-command,
    TOOLKIT_PASSPHRASE, the configuration, or a prompt) proves access; the new
    one comes from --new-passphrase-file, --new-passphrase-command,
    TOOLKIT_NEW_PASSPHRASE, or is asked twice on a terminal.

    \b
    Example:
      toolkit --repo /backup/appstacks key add --new-passphrase-file /root/recovery-passphrase
    """
    from catalog.keys import add_slot

    root, keys, _slot = _unlocked_slot(c)
    new = _new_passphrase(c, root, new_passphrase_file, new_passphrase_command)
    with _changing_keys(c):
        added = add_slot(root, keys, new, c.kdf())
    c.emit({"added": added.id}, f"added key slot {added.id}")


@key.command("change")
@_new_passphrase_file
@_new_passphrase_command
@pass_ctx
def key_change(c: Ctx, new_passphrase_file: Path | None, new_passphrase_command: str | None) -> None:
    """Replace the key slot the current passphrase opens by one under a new passphrase.

    The data is not re-encrypted: the same repository key is wrapped again.

    \b
    Example:
      TOOLKIT_PASSPHRASE=… TOOLKIT_NEW_PASSPHRASE=… toolkit --repo /backup/appstacks key change
    """
    from catalog.keys import change_slot

    root, keys, slot = _unlocked_slot(c)
    new = _new_passphrase(c, root, new_passphrase_file, new_passphrase_command)
    with _changing_keys(c):
        changed = change_slot(root, keys, slot, new, c.kdf())
    c.emit({"removed": slot, "added": changed.id}, f"key slot {slot} replaced by {changed.id}")


@key.command("remove")
@click.argument("slot")
@pass_ctx
def key_remove(c: Ctx, slot: str) -> None:
    """Remove key slot SLOT; the passphrase given must open a slot that stays.

    The last slot is never removed.

    \b
    Example:
      toolkit --repo /backup/appstacks key remove 3fa2c1d0
    """
    from catalog.keys import remove_slot

    root, keys, _opened = _unlocked_slot(c)
    with _changing_keys(c):
        left = remove_slot(root, keys, slot, c.passphrase(root))
    c.emit({"removed": slot, "slots": [s.id for s in left]}, f"removed key slot {slot}; {len(left)} left")


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


@dataclass
class Run:
    """One run of the CLI as main() sees it: the command's context, or the error it stopped with."""

    ctx: Ctx | None = None
    error: dict[str, Any] | None = None


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, turn errors into one line and an exit code, then notify as ``[notify]`` asks."""
    run = Run()
    exit_code = 0
    try:
        _run_cli(argv, run)
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        raise
    finally:
        _notify(run, exit_code)


def _notify(run: Run, exit_code: int) -> None:
    """Send the job's summary to the configured notifiers; a failure is a warning, never a new exit code."""
    from toolkit.notify import NOTIFIED_COMMANDS, is_wanted, send, summary

    c = run.ctx
    if c is None or c.command not in NOTIFIED_COMMANDS:
        return
    try:
        config = c.config(required=False)
        notify = config.notify if config is not None else None
        if not is_wanted(notify, c.command, exit_code) or notify is None:
            return
        repository = str(c.repo_path) if c.repo_path is not None else None
        result = c.result if run.error is None else run.error
        data = summary(c.command, exit_code, result, repository, datetime.now(UTC))
        warnings = send(notify, data)
    except Error as exc:  # the configuration: when the job already stopped on it, it said so
        warnings = [f"no notification sent: {exc}"] if run.error is None else []
    except Exception as exc:  # noqa: BLE001 (a notifier never changes the job's outcome)
        warnings = [f"no notification sent: unexpected {type(exc).__name__}"]
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


def _run_cli(argv: list[str] | None, run: Run) -> None:
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    tune_allocator()
    try:
        cli.main(args=argv, prog_name="toolkit", standalone_mode=False, obj=run)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except Error as exc:
        run.error = {"ok": False, "code": exc.code, "message": str(exc), "hint": exc.hint_text}
        if as_json:
            click.echo(json.dumps(run.error))
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
