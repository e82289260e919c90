"""Timers for the routine jobs: systemd units, or a cron file for hosts without systemd.

| job | when | command |
|---|---|---|
| snapshot | nightly 02:30 (+ up to 15 min) | ``toolkit snapshot`` |
| verify | Sundays 04:00, except the first of the month | ``toolkit verify --read-data-subset 15`` |
| verify-data | the first Sunday of the month, 04:00 | ``toolkit verify --read-data`` |
| prune | Saturdays 12:00 (+ up to 30 min), with a ``[retention]`` | ``toolkit prune`` (the policy of ``[retention]``) |

Fifteen percent a week reads every pack within seven weeks; the monthly full read
bounds that at a month. The two verify jobs never fall on the same day. Prune
runs only when the configuration has a retention policy, which it reads at each
run (an edited ``[retention]`` applies from the next run); it runs at midday,
well after the night's snapshot and a day before the Sunday verify, because it
needs the writer lock and no reader (it exits 3 otherwise).

Units are named ``appstack-toolkit-JOB``, or with a schedule name
``appstack-toolkit-NAME-JOB``, so one host can hold the timers of several
configurations (sites); the cron file is ``appstack-toolkit[-NAME]`` likewise.

A job with a ``timeout`` (the snapshot and the prune) is stopped when it runs longer: by systemd
(``TimeoutStartSec=``), or under cron by coreutils ``timeout`` with the same duration; the verify
jobs have no limit.

Every non-zero exit code stays a failure: exit 1 (the job ran and found or left
problems) must reach ``systemctl --failed``, ``OnFailure=`` and monitoring, so no
``SuccessExitStatus=`` is set. Secrets come from environment files, never from the command line:
``/etc/appstack-toolkit/env`` (``EnvironmentFile=-/etc/appstack-toolkit/env``) and, for a named schedule,
then ``/etc/appstack-toolkit/NAME.env``, whose values win; each is read when it exists. Sites on one host thus
share what they have in common (a proxy) and keep secrets under the same variable names apart.

The functions here only render text; :func:`install` writes it.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from catalog.errors import Error
from toolkit.config import RetentionConfig

UNIT_PREFIX: Final = "appstack-toolkit"
# The environment files of the jobs: KEY=value lines, mode 0600, each optional. Every schedule reads ENV_DIR/env;
# a named one then reads ENV_DIR/NAME.env, so its values win.
ENV_DIR: Final = Path("/etc/appstack-toolkit")
SHARED_ENV: Final = "env"
ENV_FILE: Final = ENV_DIR / SHARED_ENV
LOG_DIR: Final = Path("/var/log/appstack-toolkit")  # cron only: the output of each job's last run
CRON_FILE: Final = "appstack-toolkit"  # a file name /etc/cron.d accepts (no dot)
# A schedule name: a word that is safe in a unit name, an /etc/cron.d file name (run-parts: no dot) and a log
# file name, and that cannot be read as a systemd template instance (no @) or a path.
SCHEDULE_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,30}[A-Za-z0-9])?")
UNIT_MODE: Final = 0o644  # systemd and cron read these as root; they hold no secret
# systemd's relaxed user-name rule: what User= accepts besides a numeric id.
USER_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
# Arguments made of these characters need no quoting in ExecStart= nor in sh.
PLAIN_ARG: Final = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
# Cron jobs only: how long `timeout` waits after its SIGTERM before it sends SIGKILL. The toolkit sets no SIGTERM
# handler, so TERM ends it at once and there is nothing to wait for; a process still there a minute later is stuck
# (or a child ignores TERM), and killing it is as safe as the TERM (a stale lock is removed by the next writer,
# unfinished data is unreferenced). Short, so a prune stopped at its limit is gone well before the next snapshot.
CRON_KILL_AFTER: Final = "1m"
# systemd time span units (systemd.time(7)) that a Job's timeout may use, in seconds.
SPAN_UNITS: Final = {
    "": 1,
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
SPAN_PART: Final = re.compile(r"\s*([0-9]+)\s*([a-z]*)")


class ScheduleInvalid(Error):
    template = "cannot write timers: {detail}"
    hint = "give absolute paths and a user name the system knows (toolkit schedule --user NAME)"
    code = "schedule_invalid"


class ScheduleNameInvalid(Error):
    template = (
        "{name!r} cannot name timers: use up to 32 letters, digits, - and _, starting and ending with a letter or digit"
    )
    hint = "e.g. toolkit schedule --name dc1 (units appstack-toolkit-dc1-snapshot.timer, …)"
    code = "schedule_name_invalid"


@dataclass(frozen=True, slots=True)
class Job:
    name: str  # unit name: appstack-toolkit-[NAME-]<name>.service / .timer
    description: str
    args: tuple[str, ...]  # after the global options
    on_calendar: str  # systemd calendar expression
    randomized_delay: str  # RandomizedDelaySec=
    cron_time: str  # the five cron time fields
    cron_skip: str  # sh test that, when true, skips the run (cron cannot say "first Sunday"); "" runs always
    background: bool  # lowest CPU and I/O priority
    timeout: str | None  # TimeoutStartSec= (also the cron job's `timeout`); None: no limit (a oneshot's default)


JOBS: Final = (
    Job(
        name="snapshot",
        description="nightly snapshot of every configured site",
        args=("snapshot",),
        on_calendar="*-*-* 02:30:00",
        randomized_delay="15min",
        cron_time="30 2 * * *",
        cron_skip="",
        background=True,
        # A hung run must end before the next night; the next writer removes its stale lock.
        timeout="22h",
    ),
    Job(
        name="verify",
        description="weekly verification, 15 percent of the stored data, least recently read first",
        args=("verify", "--read-data-subset", "15"),
        on_calendar="Sun *-*-08..31 04:00:00",
        randomized_delay="30min",
        cron_time="0 4 * * 0",
        cron_skip='[ "$(date +%d)" -le 7 ]',
        background=False,
        timeout=None,
    ),
    Job(
        name="verify-data",
        description="monthly verification of every stored byte",
        args=("verify", "--read-data"),
        on_calendar="Sun *-*-01..07 04:00:00",
        randomized_delay="30min",
        cron_time="0 4 * * 0",
        cron_skip='[ "$(date +%d)" -gt 7 ]',
        background=False,
        timeout=None,
    ),
)


def prune_job() -> Job:
    """The weekly prune: ``prune`` without options applies the configuration's ``[retention]`` at each run."""
    return Job(
        name="prune",
        description="weekly prune of the snapshots the retention policy does not keep",
        args=("prune",),
        # Saturday midday: the night's snapshot (02:30) is long done and the Sunday verify (04:00) far off.
        on_calendar="Sat *-*-* 12:00:00",
        randomized_delay="30min",
        cron_time="0 12 * * 6",
        cron_skip="",
        # It holds the writer lock: best-effort priority like verify, so it finishes rather than starves.
        background=False,
        # Killed (safely: a crash leaves only unreferenced data, collected next time) before it could hold the
        # writer lock at the nightly snapshot: 12:00 + 30 min + 12 h ends by 00:30.
        timeout="12h",
    )


def jobs_for(retention: RetentionConfig | None) -> tuple[Job, ...]:
    """The routine jobs, plus the weekly prune when the configuration has a retention policy."""
    return JOBS if retention is None else (*JOBS, prune_job())


@dataclass(frozen=True, slots=True)
class Schedule:
    """What every job runs: ``command --config CONFIG [--repo REPOSITORY] ARGS`` as ``user``."""

    command: tuple[str, ...]  # the toolkit: ("/usr/local/bin/toolkit",) or (python, "-m", "toolkit")
    config: Path
    user: str
    repository: Path | None = None  # given as --repo (and mounted before the job); else the configuration's
    env_file: Path | None = None  # the one environment file the jobs read; None: default_env_files(name)
    repository_url: str | None = None  # an s3:// repository given as --repo (nothing to mount)
    name: str | None = None  # units appstack-toolkit-NAME-JOB; None: appstack-toolkit-JOB, one set per host
    retention: RetentionConfig | None = None  # the configuration's [retention]: adds the weekly prune job

    @property
    def jobs(self) -> tuple[Job, ...]:
        return jobs_for(self.retention)

    @property
    def env_files(self) -> tuple[Path, ...]:
        """The environment files the jobs read, in this order (a value in a later one wins)."""
        return (self.env_file,) if self.env_file is not None else default_env_files(self.name)

    @property
    def prefix(self) -> str:
        """What every file name starts with: ``appstack-toolkit`` or ``appstack-toolkit-NAME``."""
        return UNIT_PREFIX if self.name is None else f"{UNIT_PREFIX}-{self.name}"

    def check(self) -> None:
        if self.name is not None and not SCHEDULE_NAME.fullmatch(self.name):
            raise ScheduleNameInvalid(name=self.name)
        if not self.command or not Path(self.command[0]).is_absolute():
            raise ScheduleInvalid(detail=f"the toolkit executable {' '.join(self.command)!r} is not an absolute path")
        paths = [("configuration", self.config), ("repository", self.repository)]
        for what, path in [*paths, *(("env", env) for env in self.env_files)]:
            if path is not None and not path.is_absolute():
                raise ScheduleInvalid(detail=f"the {what} path {str(path)!r} is not absolute")
        if not USER_NAME.fullmatch(self.user):
            raise ScheduleInvalid(detail=f"{self.user!r} is not a user name")
        if self.repository is not None and self.repository_url is not None:
            raise ScheduleInvalid(detail="a job has one repository: a directory or an s3:// URL")
        where = str(self.repository or self.repository_url or "")
        words = [*self.command, str(self.config), where, *map(str, self.env_files)]
        if any(ch in w for w in words for ch in "\n\r\0"):
            raise ScheduleInvalid(detail="a path contains a line break or NUL")

    def argv(self, job: Job) -> list[str]:
        where = self.repository or self.repository_url
        repo = ["--repo", str(where)] if where is not None else []
        return [*self.command, "--config", str(self.config), *repo, *job.args]


def default_env_files(name: str | None) -> tuple[Path, ...]:
    """What a schedule's jobs read, in order: the shared ``env``, then, for a named schedule, its ``NAME.env``."""
    shared = ENV_DIR / SHARED_ENV
    return (shared,) if name is None else (shared, ENV_DIR / f"{name}.env")


def toolkit_command(argv0: str, python: str) -> tuple[str, ...]:
    """How a job starts this toolkit: the console script that is running, else ``python -m toolkit``."""
    script = Path(argv0)
    if script.name == "toolkit" and script.is_absolute() and script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(Path(python).absolute()), "-m", "toolkit")


def repository_owner(repository: Path) -> str | None:
    """The name of the user owning the repository directory; None when it does not exist or has no name."""
    try:
        return pwd.getpwuid(repository.stat().st_uid).pw_name
    except (OSError, KeyError):
        return None


def check_user(user: str, repository: Path | None) -> None:
    """Refuse a user this system does not know, or one the repository would refuse (it belongs to another)."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ScheduleInvalid(detail=f"there is no user {user!r} on this system") from None
    if repository is None or not repository.exists():
        return
    owner = repository.stat().st_uid
    if owner != uid:
        raise ScheduleInvalid(
            detail=f"{repository} belongs to {repository_owner(repository) or owner}, and a job running as "
            f"{user} would refuse it (chown -R {user} {repository}, or --user the owner)"
        )


@dataclass(frozen=True, slots=True)
class UnitFile:
    name: str  # file name in the target directory
    text: str


def _systemd_word(arg: str, *, executable: bool = False) -> str:
    """One ExecStart= word: quoted when needed, ``%`` escaped (specifiers) and, in arguments, ``$`` (variables).

    systemd expands variables in the arguments only, so the executable's ``$`` stays single.
    """
    if not PLAIN_ARG.fullmatch(arg):
        arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    arg = arg.replace("%", "%%")
    return arg if executable else arg.replace("$", "$$")


def _systemd_path(path: Path) -> str:
    """A path in a unit setting without variable expansion (RequiresMountsFor=): quoted, ``%`` escaped."""
    text = str(path)
    if not PLAIN_ARG.fullmatch(text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text.replace("%", "%%")


def _sh_word(arg: str) -> str:
    return arg if PLAIN_ARG.fullmatch(arg) else shlex.quote(arg)


HEADER: Final = "# Generated by `toolkit schedule`. Regenerate rather than edit; local changes: systemctl edit UNIT.\n"

EXIT_CODES: Final = """\
# Exit codes: 0 ok; 1 the job ran and found or left problems (failed volumes, damaged data);
# 2 bad usage or configuration; 3 the repository is locked by another job. Every non-zero code
# leaves the unit failed on purpose, so systemctl --failed, OnFailure= and monitoring see it.
"""


def _title(schedule: Schedule) -> str:
    return "AppStack toolkit" if schedule.name is None else f"AppStack toolkit {schedule.name}"


def service_unit(schedule: Schedule, job: Job) -> UnitFile:
    lines = [
        HEADER.rstrip("\n"),
        "[Unit]",
        f"Description={_title(schedule)}: {job.description}",
        "Wants=network-online.target",
        "After=network-online.target remote-fs.target",
    ]
    if schedule.repository is not None:
        lines.append(f"RequiresMountsFor={_systemd_path(schedule.repository)}")
    lines += [
        "",
        "[Service]",
        "Type=oneshot",
        f"User={schedule.user}",
        # Read in this order; a variable set in both takes the later file's value.
        *(f"EnvironmentFile=-{env}" for env in schedule.env_files),
        "ExecStart=" + " ".join(_systemd_word(a, executable=i == 0) for i, a in enumerate(schedule.argv(job))),
        EXIT_CODES.rstrip("\n"),
        "UMask=0077",
        "NoNewPrivileges=yes",
    ]
    if job.background:
        lines += ["Nice=10", "IOSchedulingClass=idle"]
    else:
        lines += ["Nice=5", "IOSchedulingClass=best-effort", "IOSchedulingPriority=7"]
    if job.timeout is not None:
        lines.append(f"TimeoutStartSec={job.timeout}")
    return UnitFile(f"{schedule.prefix}-{job.name}.service", "\n".join(lines) + "\n")


def timer_unit(schedule: Schedule, job: Job) -> UnitFile:
    text = (
        HEADER + "[Unit]\n"
        f"Description={_title(schedule)} timer: {job.description}\n"
        "\n"
        "[Timer]\n"
        f"OnCalendar={job.on_calendar}\n"
        f"RandomizedDelaySec={job.randomized_delay}\n"
        "# Run at the next boot when the machine was off at the scheduled time.\n"
        "Persistent=true\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return UnitFile(f"{schedule.prefix}-{job.name}.timer", text)


def systemd_units(schedule: Schedule, jobs: Iterable[Job] | None = None) -> list[UnitFile]:
    """A service and a timer per job (default: the schedule's)."""
    schedule.check()
    units = []
    for job in schedule.jobs if jobs is None else jobs:
        units += [service_unit(schedule, job), timer_unit(schedule, job)]
    return units


def timespan_seconds(span: str) -> int:
    """A systemd time span (``22h``, ``1h 30min``, ``90``: seconds) in seconds; ValueError for other text."""
    seconds, pos = 0, 0
    for part in SPAN_PART.finditer(span):
        if part.start() != pos or part.group(2) not in SPAN_UNITS:
            break
        seconds += int(part.group(1)) * SPAN_UNITS[part.group(2)]
        pos = part.end()
    if pos == 0 or span[pos:].strip():
        raise ValueError(f"{span!r} is not a time span this module knows")
    return seconds


def timeout_duration(span: str) -> str:
    """The systemd time span as a coreutils ``timeout`` duration, in the largest unit that keeps it exact."""
    seconds = timespan_seconds(span)
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def cron_line(schedule: Schedule, job: Job, log_dir: Path = LOG_DIR) -> str:
    """One /etc/cron.d line; prints a line (which cron mails) only when the job exits non-zero.

    A job with a time limit runs under ``timeout``, which stops it (exit 124) like its unit's ``TimeoutStartSec=``.
    """
    log = _sh_word(str(log_dir / log_name(schedule, job)))
    # Sourced in the order of the unit's EnvironmentFile= lines, each only when the user can read it.
    sources = "".join(f"[ ! -r {env} ] || . {env}; " for env in (_sh_word(str(e)) for e in schedule.env_files))
    run = " ".join(_sh_word(a) for a in schedule.argv(job))
    if job.background:
        run = f"nice -n 10 ionice -c 3 {run}"
    if job.timeout is not None:
        # Outermost, so TERM (and KILL) reach the toolkit and, through timeout's process group, its children.
        run = f"timeout --kill-after={CRON_KILL_AFTER} {timeout_duration(job.timeout)} {run}"
    body = f"(set -a; {sources}set +a; exec {run}) >{log} 2>&1"
    who = "" if schedule.name is None else f"{schedule.prefix}: "
    alert = f'echo "{who}toolkit {" ".join(job.args)} exited with $? (see {log})"'
    command = f"{body} || {alert}"
    if job.cron_skip:
        command = f"{job.cron_skip} || {command}"
    return f"{job.cron_time} {schedule.user} {command.replace('%', chr(92) + '%')}"


def log_name(schedule: Schedule, job: Job) -> str:
    """The file in the log directory with the output of a cron job's last run: JOB.log, or NAME-JOB.log."""
    return f"{job.name}.log" if schedule.name is None else f"{schedule.name}-{job.name}.log"


def cron_file(schedule: Schedule, jobs: Iterable[Job] | None = None, log_dir: Path = LOG_DIR) -> UnitFile:
    """The jobs (default: the schedule's) as an /etc/cron.d file (with a user field)."""
    schedule.check()
    job_log = "JOB.log" if schedule.name is None else f"{schedule.name}-JOB.log"
    text = (
        f"# /etc/cron.d/{schedule.prefix}, generated by `toolkit schedule --cron`: the jobs of the systemd timers.\n"
        "# cron ignores exit codes, so each job prints one line when it exits non-zero (1 problems found,\n"
        f"# 2 bad usage or configuration, 3 repository locked) and cron mails it. {log_dir}/{job_log} holds\n"
        "# the output of the last run; create that directory, writable by the user, first. A job with a time\n"
        "# limit runs under timeout: 124 means it was stopped at its limit, 137 that it had to be killed.\n"
        "SHELL=/bin/sh\n"
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "MAILTO=root\n"
    )
    text += "".join(cron_line(schedule, job, log_dir) + "\n" for job in (schedule.jobs if jobs is None else jobs))
    return UnitFile(CRON_FILE if schedule.name is None else schedule.prefix, text)


def format_units(units: Iterable[UnitFile]) -> str:
    """All files one after the other, each under a comment naming it, for printing."""
    return "\n".join(f"# ---- {u.name} ----\n{u.text}" for u in units).rstrip("\n")


def timer_names(units: Iterable[UnitFile]) -> list[str]:
    return [u.name for u in units if u.name.endswith(".timer")]


def install(units: Iterable[UnitFile], directory: Path) -> list[Path]:
    """Write each file into ``directory`` (created if missing), atomically, mode 0644; replaces older ones."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for unit in units:
        target = directory / unit.name
        fd, tmp = tempfile.mkstemp(prefix=f".{unit.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(unit.text)
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).chmod(UNIT_MODE)
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
