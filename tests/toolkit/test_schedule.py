"""toolkit schedule: systemd units and a cron file that run the routine jobs correctly."""

from __future__ import annotations

import configparser
import dataclasses
import getpass
import itertools
import os
import re
import shlex
import stat
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from toolkit import schedule
from toolkit.config import TEMPLATE, ConfigError, RetentionConfig, load_config
from toolkit.lab.corpus import make_volume
from toolkit.schedule import (
    CRON_KILL_AFTER,
    ENV_FILE,
    JOBS,
    Schedule,
    ScheduleInvalid,
    ScheduleNameInvalid,
    check_user,
    cron_file,
    cron_line,
    format_units,
    install,
    jobs_for,
    prune_job,
    repository_owner,
    systemd_units,
    timeout_duration,
    timer_names,
    timespan_seconds,
    toolkit_command,
)

from ..conftest import Toolkit

SERVICE_KEYS = {
    "Unit": {"Description", "Wants", "After", "RequiresMountsFor"},
    "Service": {
        "Type",
        "User",
        "EnvironmentFile",
        "ExecStart",
        "UMask",
        "NoNewPrivileges",
        "Nice",
        "IOSchedulingClass",
        "IOSchedulingPriority",
        "TimeoutStartSec",
    },
}
TIMER_KEYS = {
    "Unit": {"Description"},
    "Timer": {"OnCalendar", "RandomizedDelaySec", "Persistent"},
    "Install": {"WantedBy"},
}
PYTHON = (sys.executable, "-m", "toolkit")


def spec(tmp_path: Path, **kw: object) -> Schedule:
    args: dict = {"command": PYTHON, "config": tmp_path / "toolkit.toml", "user": getpass.getuser()}
    args.update(kw)
    return Schedule(**args)


def parse(text: str) -> dict[str, dict[str, str]]:
    """The sections of a unit; EnvironmentFile= may repeat (systemd reads each, in order): its values, one a line."""
    lines = text.splitlines()
    env = [line.split("=", 1)[1] for line in lines if line.startswith("EnvironmentFile=")]
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string("\n".join(line for line in lines if not line.startswith("EnvironmentFile=")))
    sections = {s: dict(parser[s]) for s in parser.sections()}
    if env:
        sections["Service"]["EnvironmentFile"] = "\n".join(env)
    return sections


def unit(units: list, name: str) -> dict[str, dict[str, str]]:
    return parse(next(u.text for u in units if u.name == name))


def exec_argv(value: str) -> list[str]:
    """ExecStart= as systemd splits it (for the quoting we emit: double quotes, %% and $$)."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(value)]


def test_three_services_and_three_timers(tmp_path: Path) -> None:
    units = systemd_units(spec(tmp_path, repository=tmp_path / "repo"))
    names = [u.name for u in units]
    assert names == [
        f"appstack-toolkit-{job}.{kind}"
        for job in ("snapshot", "verify", "verify-data")
        for kind in ("service", "timer")
    ]
    assert timer_names(units) == [n for n in names if n.endswith(".timer")]
    for u in units:
        sections = parse(u.text)
        expected = SERVICE_KEYS if u.name.endswith(".service") else TIMER_KEYS
        assert set(sections) == set(expected), u.name
        for section, keys in sections.items():
            assert set(keys) <= expected[section], (u.name, section, set(keys) - expected[section])
        assert "SuccessExitStatus" not in u.text  # exit 1 (problems found) must stay a failure
    for job in JOBS:
        service = unit(units, f"appstack-toolkit-{job.name}.service")["Service"]
        assert service["Type"] == "oneshot"
        assert service["User"] == getpass.getuser()
        assert service["EnvironmentFile"] == f"-{ENV_FILE}" == "-/etc/appstack-toolkit/env"
        assert exec_argv(service["ExecStart"]) == [
            *PYTHON,
            "--config",
            str(tmp_path / "toolkit.toml"),
            "--repo",
            str(tmp_path / "repo"),
            *job.args,
        ]
        timer = unit(units, f"appstack-toolkit-{job.name}.timer")
        assert timer["Timer"]["Persistent"] == "true"
        assert timer["Install"]["WantedBy"] == "timers.target"
        assert unit(units, f"appstack-toolkit-{job.name}.service")["Unit"]["RequiresMountsFor"] == str(
            tmp_path / "repo"
        )
    snap = unit(units, "appstack-toolkit-snapshot.service")["Service"]
    assert snap["Nice"] == "10" and snap["IOSchedulingClass"] == "idle"
    assert snap["TimeoutStartSec"] == "22h"
    snap_timer = unit(units, "appstack-toolkit-snapshot.timer")["Timer"]
    assert snap_timer["OnCalendar"] == "*-*-* 02:30:00"
    assert snap_timer["RandomizedDelaySec"] == "15min"
    verify = unit(units, "appstack-toolkit-verify.service")["Service"]
    assert exec_argv(verify["ExecStart"])[-3:] == ["verify", "--read-data-subset", "15"]
    assert exec_argv(unit(units, "appstack-toolkit-verify-data.service")["Service"]["ExecStart"])[-2:] == [
        "verify",
        "--read-data",
    ]


def test_without_a_repository_the_configuration_names_it(tmp_path: Path) -> None:
    units = systemd_units(spec(tmp_path))
    service = unit(units, "appstack-toolkit-snapshot.service")
    assert "--repo" not in service["Service"]["ExecStart"]
    assert "RequiresMountsFor" not in service["Unit"]


def calendar(expression: str) -> str:
    """What systemd-analyze says of the next 60 times a calendar expression fires (UTC, C locale)."""
    return subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=60", expression],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
    ).stdout


def test_calendars_weekly_and_monthly_verify_never_share_a_day() -> None:
    got = {}
    for job in JOBS:
        out = calendar(job.on_calendar)
        got[job.name] = {
            date.fromisoformat(w) for line in out.splitlines() for w in line.split() if len(w) == 10 and w[4] == "-"
        }
    assert len(got["snapshot"]) == 60  # every day
    assert len(got["verify"]) == len(got["verify-data"]) == 60
    assert all(d.weekday() == 6 and d.day > 7 for d in got["verify"])
    assert all(d.weekday() == 6 and d.day <= 7 for d in got["verify-data"])
    # Between them, every Sunday: one verify a week.
    until = min(max(got["verify"]), max(got["verify-data"]))
    span = sorted(d for d in got["verify"] | got["verify-data"] if d <= until)
    assert len(span) > 50
    assert all(b - a == timedelta(days=7) for a, b in itertools.pairwise(span))


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    # An executable at a path with a space, a percent sign and a dollar: quoting and escaping must hold,
    # or systemd looks for a different file and reports it missing.
    odd = tmp_path / "odd dir %n $HOME"
    odd.mkdir()
    exe = odd / "toolkit"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    units = systemd_units(spec(tmp_path, command=(str(exe),), repository=tmp_path / "my repo"))
    written = install(units, tmp_path / "units")
    r = subprocess.run(["systemd-analyze", "verify", *map(str, written)], capture_output=True, text=True, check=False)
    noise = [line for line in r.stderr.splitlines() if "Failed to" in line or "Unknown" in line or "bad" in line]
    assert r.returncode == 0 and not noise, r.stderr
    # The same check catches a unit whose executable does not exist.
    missing = systemd_units(spec(tmp_path, command=(str(tmp_path / "nowhere" / "toolkit"),)))
    written = install(missing, tmp_path / "broken")
    r = subprocess.run(["systemd-analyze", "verify", *map(str, written)], capture_output=True, text=True, check=False)
    assert r.returncode != 0


def test_the_service_command_runs_a_snapshot(toolkit: Toolkit, tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_volume(ds1, "cloudvolumes/apps/Visio.vmdk", size_mib=4, seed=1, real=False)
    config = tmp_path / "toolkit.toml"
    config.write_text(f'repository = "{toolkit.repo}"\n[sites.lab.datastores.ds1]\npath = "{ds1}"\n')
    toolkit("init")
    units = systemd_units(spec(tmp_path, config=config, repository=toolkit.repo))
    for name in ("appstack-toolkit-snapshot.service", "appstack-toolkit-verify.service"):
        argv = exec_argv(unit(units, name)["Service"]["ExecStart"])
        r = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        assert r.returncode == 0, r.stdout + r.stderr
    assert len(toolkit.json("snapshots")["snapshots"]) == 1


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A fake toolkit that records its arguments and one secret, and a fake date."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tk = bin_dir / "toolkit"
    tk.write_text(
        '#!/bin/sh\necho "args: $*"\necho "secret: ${TOOLKIT_DC1_AVM_PASSWORD:-unset}"\nexit "${FAKE_RC:-0}"\n'
    )
    tk.chmod(0o755)
    day = bin_dir / "date"
    day.write_text('#!/bin/sh\necho "$FAKE_DAY"\n')
    day.chmod(0o755)
    return bin_dir


def _run_cron(
    line: str, fake_bin: Path, *, rc: int = 0, day: str = "15", timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    fields = line.split(" ", 6)
    command = fields[6]
    assert "%" not in command.replace("\\%", ""), "cron turns a bare % into a newline"
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "FAKE_RC": str(rc), "FAKE_DAY": day}
    return subprocess.run(
        ["/bin/sh", "-c", command.replace("\\%", "%")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=timeout,
    )


def test_cron_lines_run_the_jobs_and_speak_only_on_failure(tmp_path: Path, fake_bin: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("TOOLKIT_DC1_AVM_PASSWORD=s3cret\n")
    logs = tmp_path / "log"
    logs.mkdir()
    sched = spec(tmp_path, command=(str(fake_bin / "toolkit"),), env_file=env_file)
    snapshot, verify, verify_data = (cron_line(sched, job, logs) for job in JOBS)
    assert snapshot.split(" ", 6)[:6] == ["30", "2", "*", "*", "*", getpass.getuser()]

    ok = _run_cron(snapshot, fake_bin)
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == ""
    log = (logs / "snapshot.log").read_text()
    assert f"args: --config {tmp_path / 'toolkit.toml'} snapshot" in log
    assert "secret: s3cret" in log

    bad = _run_cron(snapshot, fake_bin, rc=1)
    assert bad.stdout.strip() == f"toolkit snapshot exited with 1 (see {logs / 'snapshot.log'})"

    # Exactly one verify job runs on a Sunday: the full read on the first Sunday of the month.
    for day, runs in (("03", "verify-data"), ("07", "verify-data"), ("08", "verify"), ("29", "verify")):
        for path in logs.glob("verify*.log"):
            path.unlink()
        assert _run_cron(verify, fake_bin, day=day, rc=1).stdout.startswith("toolkit verify") == (runs == "verify")
        assert _run_cron(verify_data, fake_bin, day=day, rc=1).stdout.startswith("toolkit verify") == (
            runs == "verify-data"
        )
        assert sorted(p.name for p in logs.glob("verify*.log")) == [f"{runs}.log"]


def test_cron_without_env_file_or_log_directory(tmp_path: Path, fake_bin: Path) -> None:
    sched = spec(tmp_path, command=(str(fake_bin / "toolkit"),), env_file=tmp_path / "absent")
    line = cron_line(sched, JOBS[0], tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    assert _run_cron(line, fake_bin).stdout == ""  # no env file: fine
    missing_logs = cron_line(sched, JOBS[0], tmp_path / "no-such-dir")
    r = _run_cron(missing_logs, fake_bin)
    assert "exited with" in r.stdout  # a missing log directory is reported, not silent


def test_cron_file_header(tmp_path: Path) -> None:
    text = cron_file(spec(tmp_path)).text
    assert text.splitlines()[0].startswith("# /etc/cron.d/appstack-toolkit")
    jobs = [line for line in text.splitlines() if line and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(jobs) == 3
    assert "MAILTO=root" in text and "SHELL=/bin/sh" in text
    assert cron_file(spec(tmp_path)).name == "appstack-toolkit"  # /etc/cron.d skips names with a dot


COREUTILS_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CRON_TIMEOUT = re.compile(r" exec timeout --kill-after=(\S+) (\S+) ")


def _duration_s(text: str) -> int:
    """A coreutils ``timeout`` duration (a whole number and a suffix) in seconds."""
    return int(text[:-1]) * COREUTILS_UNITS[text[-1]]


def test_cron_jobs_have_the_time_limits_of_their_units(tmp_path: Path) -> None:
    sched = spec(tmp_path, retention=RETENTION)
    units = systemd_units(sched)
    cron = cron_file(sched).text.splitlines()
    limited = {}
    for job in sched.jobs:
        line = cron_line(sched, job)
        assert line in cron
        service = unit(units, f"appstack-toolkit-{job.name}.service")["Service"]
        found = CRON_TIMEOUT.search(line)
        if job.timeout is None:  # no limit in systemd: none in cron either
            assert "TimeoutStartSec" not in service and " timeout " not in line, job.name
            continue
        assert found is not None, line
        kill_after, duration = found.groups()
        assert kill_after == CRON_KILL_AFTER
        assert _duration_s(duration) == timespan_seconds(service["TimeoutStartSec"]) == timespan_seconds(job.timeout)
        # coreutils accepts both durations as written.
        assert subprocess.run(["timeout", f"--kill-after={kill_after}", duration, "true"], check=False).returncode == 0
        limited[job.name] = _duration_s(duration)
    assert limited == {"snapshot": 22 * 3600, "prune": 12 * 3600}
    # cron starts the prune at 12:00 sharp: with the limit and the grace it is gone before the 02:30 snapshot.
    assert 12 * 3600 + limited["prune"] + _duration_s(CRON_KILL_AFTER) < (24 + 2) * 3600 + 30 * 60
    assert any("124 means it was stopped at its limit" in line for line in cron if line.startswith("#"))


def test_a_cron_job_past_its_limit_is_stopped(tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    sleeper = fake_bin / "toolkit"
    sleeper.write_text("#!/bin/sh\necho started\nexec sleep 120\n")
    sched = spec(tmp_path, command=(str(sleeper),), env_file=tmp_path / "env")
    # The snapshot (under nice and ionice), with its 22 h cut to a second.
    job = dataclasses.replace(JOBS[0], timeout="1s")
    assert " exec timeout --kill-after=1m 1s nice -n 10 ionice -c 3 " in cron_line(sched, job, logs)
    r = _run_cron(cron_line(sched, job, logs), fake_bin, timeout=60)
    assert r.stdout.strip() == f"toolkit snapshot exited with 124 (see {logs / 'snapshot.log'})"
    assert (logs / "snapshot.log").read_text() == "started\n"
    # A job that ignores SIGTERM is killed once the grace is over (cut to a second as well).
    monkeypatch.setattr(schedule, "CRON_KILL_AFTER", "1s")
    sleeper.write_text("#!/bin/sh\ntrap '' TERM\necho started\nsleep 120\n")
    r = _run_cron(cron_line(sched, job, logs), fake_bin, timeout=60)
    assert r.stdout.strip() == f"toolkit snapshot exited with 137 (see {logs / 'snapshot.log'})"


@pytest.mark.parametrize(
    ("span", "seconds", "duration"),
    [("22h", 79200, "22h"), ("12h", 43200, "12h"), ("90", 90, "90s"), ("1h 30min", 5400, "90m"), ("2d", 172800, "2d")],
)
def test_systemd_time_spans_become_timeout_durations(span: str, seconds: int, duration: str) -> None:
    assert timespan_seconds(span) == seconds
    assert timeout_duration(span) == duration


@pytest.mark.parametrize("span", ["", "h", "12 weeks", "5x", "1h,", "1h x 2s", "infinity"])
def test_unknown_time_spans_are_refused(span: str) -> None:
    with pytest.raises(ValueError, match="not a time span"):
        timespan_seconds(span)


def test_install_writes_atomically_and_replaces(tmp_path: Path) -> None:
    units = systemd_units(spec(tmp_path))
    target = tmp_path / "etc" / "systemd" / "system"
    written = install(units, target)
    assert sorted(p.name for p in target.iterdir()) == sorted(u.name for u in units)
    for path, u in zip(written, units, strict=True):
        assert path.read_text() == u.text
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    (target / units[0].name).write_text("old")
    install(units, target)
    assert (target / units[0].name).read_text() == units[0].text
    assert len(list(target.iterdir())) == len(units)  # no temporary files left behind


def test_format_units_names_each_file(tmp_path: Path) -> None:
    units = systemd_units(spec(tmp_path))
    text = format_units(units)
    for u in units:
        assert f"# ---- {u.name} ----\n{u.text}" in text + "\n"


def test_invalid_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScheduleInvalid, match="not an absolute path"):
        systemd_units(spec(tmp_path, command=("toolkit",)))
    with pytest.raises(ScheduleInvalid, match="not absolute"):
        systemd_units(spec(tmp_path, config=Path("toolkit.toml")))
    with pytest.raises(ScheduleInvalid, match="not a user name"):
        systemd_units(spec(tmp_path, user="CORP\\backup"))
    with pytest.raises(ScheduleInvalid, match="line break"):
        cron_file(spec(tmp_path, config=tmp_path / "a\nb"))
    with pytest.raises(ScheduleInvalid, match="no user"):
        check_user("no-such-user-here", None)
    assert ScheduleInvalid.exit_code == 2


def test_the_repository_owner_runs_the_jobs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    me = getpass.getuser()
    assert repository_owner(repo) == me
    assert repository_owner(tmp_path / "absent") is None
    check_user(me, repo)
    if os.getuid() != 0:
        pytest.skip("changing a directory's owner needs root")
    os.chown(repo, 65534, 65534)
    with pytest.raises(ScheduleInvalid, match="would refuse it"):
        check_user(me, repo)


def test_toolkit_command(tmp_path: Path) -> None:
    script = tmp_path / "toolkit"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert toolkit_command(str(script), "/usr/bin/python3") == (str(script),)
    assert toolkit_command("/srv/toolkit/__main__.py", "/usr/bin/python3") == ("/usr/bin/python3", "-m", "toolkit")
    assert toolkit_command("toolkit", "/usr/bin/python3") == ("/usr/bin/python3", "-m", "toolkit")


def test_the_cli_command(toolkit: Toolkit, tmp_path: Path) -> None:
    config = tmp_path / "toolkit.toml"
    config.write_text(f'[sites.lab.datastores.ds1]\npath = "{tmp_path / "ds1"}"\n')
    toolkit("init")
    r = toolkit("--config", str(config), "schedule")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "# ---- appstack-toolkit-snapshot.service ----" in r.stdout
    assert f"User={getpass.getuser()}" in r.stdout
    r = toolkit("--config", str(config), "schedule", "--install", str(tmp_path / "units"))
    assert r.exit_code == 0, r.stderr
    assert len(list((tmp_path / "units").iterdir())) == 6
    assert "systemctl enable --now appstack-toolkit-snapshot.timer" in r.stdout
    data = toolkit.json("--config", str(config), "schedule", "--cron")
    assert [f["name"] for f in data["files"]] == ["appstack-toolkit"]
    r = toolkit("--config", str(config), "schedule", "--user", "no-such-user-here")
    assert r.exit_code == ScheduleInvalid.exit_code
    assert "no user" in r.stderr
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    r = toolkit("--config", str(empty), "schedule")
    assert r.exit_code == 2 and "sites" in r.stderr


def test_jobs_of_a_repository_in_object_storage_name_its_url_and_mount_nothing(tmp_path: Path) -> None:
    config = tmp_path / "toolkit.toml"
    config.write_text(f'[sites.lab.datastores.ds1]\npath = "{tmp_path / "ds1"}"\n')
    data = Toolkit("s3://appstacks-dc1/nightly").json("--config", str(config), "schedule")  # type: ignore[arg-type]
    snapshot = parse(next(f["text"] for f in data["files"] if f["name"] == "appstack-toolkit-snapshot.service"))
    argv = exec_argv(snapshot["Service"]["ExecStart"])
    assert argv[argv.index("--repo") + 1] == "s3://appstacks-dc1/nightly"
    assert "RequiresMountsFor" not in snapshot["Unit"]
    assert data["user"] == getpass.getuser()
    with pytest.raises(ScheduleInvalid):
        spec(tmp_path, repository=tmp_path / "repo", repository_url="s3://b/p").check()


# --- the weekly prune ([retention]) and schedule names (--name) ---

RETENTION = RetentionConfig(keep_daily=14, keep_weekly=8, keep_monthly=12, keep_deleted_days=30.0)
SITE = '[sites.lab.datastores.ds1]\npath = "{ds}"\n'


def test_without_retention_there_is_no_prune_job(tmp_path: Path) -> None:
    assert [j.name for j in spec(tmp_path).jobs] == ["snapshot", "verify", "verify-data"]
    assert not any("prune" in u.name or "prune" in u.text for u in systemd_units(spec(tmp_path)))
    assert " prune" not in cron_file(spec(tmp_path)).text


def test_retention_adds_a_prune_service_and_timer(tmp_path: Path) -> None:
    sched = spec(tmp_path, repository=tmp_path / "repo", retention=RETENTION)
    units = systemd_units(sched)
    names = [u.name for u in units]
    assert names[-2:] == ["appstack-toolkit-prune.service", "appstack-toolkit-prune.timer"]
    assert len(names) == 8
    for name in names[-2:]:
        sections = unit(units, name)
        expected = SERVICE_KEYS if name.endswith(".service") else TIMER_KEYS
        assert set(sections) == set(expected)
        for section, keys in sections.items():
            assert set(keys) <= expected[section], (name, section)
    prune = unit(units, "appstack-toolkit-prune.service")
    service = prune["Service"]
    assert exec_argv(service["ExecStart"]) == [
        *PYTHON,
        "--config",
        str(tmp_path / "toolkit.toml"),
        "--repo",
        str(tmp_path / "repo"),
        "prune",  # the policy is read from [retention] at each run: an edit applies without a new schedule
    ]
    assert prune["Unit"]["RequiresMountsFor"] == str(tmp_path / "repo")
    # Same rules as the other jobs: exit codes stay failures, secrets from the env file; the priority of verify
    # (it holds the writer lock: it must finish, not starve), and a limit so it never meets the next snapshot.
    assert "SuccessExitStatus" not in units[-2].text
    assert service["EnvironmentFile"] == "-/etc/appstack-toolkit/env"
    assert (service["Nice"], service["IOSchedulingClass"], service["IOSchedulingPriority"]) == ("5", "best-effort", "7")
    assert service["TimeoutStartSec"] == "12h"
    timer = unit(units, "appstack-toolkit-prune.timer")
    assert timer["Timer"] == {"OnCalendar": "Sat *-*-* 12:00:00", "RandomizedDelaySec": "30min", "Persistent": "true"}
    assert timer["Install"]["WantedBy"] == "timers.target"
    assert "\n0 12 * * 6 " in cron_file(sched).text


def test_the_prune_job_reads_the_policy_at_each_run() -> None:
    assert prune_job().args == ("prune",)
    assert jobs_for(RETENTION)[-1] == prune_job() and jobs_for(None) == JOBS


def _timespan_s(text: str) -> int:
    units = {"h": 3600, "min": 60}
    number = text.rstrip("hmin")
    return int(number) * units[text[len(number) :]]


def test_prune_runs_on_saturdays_apart_from_the_snapshot_and_the_verifies() -> None:
    job = prune_job()
    out = calendar(job.on_calendar)
    runs = [w for line in out.splitlines() for w in line.split() if len(w) == 10 and w[4] == "-"]
    times = {w for line in out.splitlines() for w in line.split() if len(w) == 8 and w[2] == ":"}
    assert len(runs) == 60
    assert all(date.fromisoformat(d).weekday() == 5 for d in runs)  # Saturday: never a verify day (Sunday)
    assert times == {"12:00:00"}
    # The latest start plus the time limit ends before the next night's snapshot (02:30, next day).
    latest_end_s = 12 * 3600 + _timespan_s(job.randomized_delay) + _timespan_s(str(job.timeout))
    assert latest_end_s < (24 + 2) * 3600 + 30 * 60
    # And it starts well after the night's snapshot could start (02:30 + 15 min).
    assert 12 * 3600 - (2 * 3600 + 45 * 60) >= 9 * 3600


def test_systemd_analyze_verify_accepts_named_units_and_the_prune_job(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "toolkit"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    units = systemd_units(spec(tmp_path, command=(str(exe),), repository=tmp_path / "repo", retention=RETENTION))
    units += systemd_units(
        spec(tmp_path, command=(str(exe),), repository=tmp_path / "repo", retention=RETENTION, name="dc2-site_b")
    )
    written = install(units, tmp_path / "units")
    assert len(written) == 16
    named = [p for p in written if p.name.startswith("appstack-toolkit-dc2-site_b-") and p.suffix == ".service"]
    assert len(named) == 4
    for path in named:  # the named services verified here read both environment files
        assert parse(path.read_text())["Service"]["EnvironmentFile"].splitlines() == [
            "-/etc/appstack-toolkit/env",
            "-/etc/appstack-toolkit/dc2-site_b.env",
        ]
    r = subprocess.run(["systemd-analyze", "verify", *map(str, written)], capture_output=True, text=True, check=False)
    noise = [line for line in r.stderr.splitlines() if "Failed to" in line or "Unknown" in line or "bad" in line]
    assert r.returncode == 0 and not noise, r.stderr


def test_the_prune_service_command_prunes_the_repository(toolkit: Toolkit, tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_volume(ds1, "cloudvolumes/apps/Visio.vmdk", size_mib=4, seed=1, real=False)
    config = tmp_path / "toolkit.toml"
    config.write_text(
        f'repository = "{toolkit.repo}"\n'
        + SITE.format(ds=ds1)
        + "[retention]\nkeep_last = 1\nkeep_deleted_days = 0.5\n"
    )
    toolkit("init")
    for _ in range(3):
        assert toolkit("--config", str(config), "snapshot").exit_code == 0
    newest = toolkit.json("snapshots")["snapshots"][-1]["id"]
    data = toolkit.json("--config", str(config), "schedule")
    prune = parse(next(f["text"] for f in data["files"] if f["name"] == "appstack-toolkit-prune.service"))
    argv = exec_argv(prune["Service"]["ExecStart"])
    assert argv[-1] == "prune"
    r = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"removed 2 snapshot(s), kept 1 (policy from [retention] of {config})" in r.stdout
    assert [s["id"] for s in toolkit.json("snapshots")["snapshots"]] == [newest]


def test_prune_options_override_the_retention_of_the_configuration(toolkit: Toolkit, tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_volume(ds1, "cloudvolumes/apps/Visio.vmdk", size_mib=4, seed=1, real=False)
    config = tmp_path / "toolkit.toml"
    config.write_text(f'repository = "{toolkit.repo}"\n' + SITE.format(ds=ds1) + "[retention]\nkeep_last = 1\n")
    toolkit("init")
    for _ in range(3):
        assert toolkit("--config", str(config), "snapshot").exit_code == 0
    given = toolkit.json("--config", str(config), "prune", "--keep-last", "2", "--dry-run")
    assert given["policy_from"] == "options" and len(given["kept"]) == 2
    configured = toolkit.json("--config", str(config), "prune", "--dry-run")
    assert configured["policy_from"] == f"[retention] of {config}" and len(configured["kept"]) == 1
    config.write_text(f'repository = "{toolkit.repo}"\n' + SITE.format(ds=ds1))
    r = toolkit("--config", str(config), "prune")
    assert r.exit_code == 2 and "keeps no snapshot" in r.stderr and "[retention]" in r.stderr
    assert len(toolkit.json("snapshots")["snapshots"]) == 3


def test_cron_prune_line_runs_on_saturdays_and_speaks_only_on_failure(tmp_path: Path, fake_bin: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    sched = spec(tmp_path, command=(str(fake_bin / "toolkit"),), retention=RETENTION, env_file=tmp_path / "env")
    line = cron_line(sched, prune_job(), logs)
    assert line.split(" ", 6)[:6] == ["0", "12", "*", "*", "6", getpass.getuser()]
    assert cron_file(sched, log_dir=logs).text.endswith(line + "\n")
    ok = _run_cron(line, fake_bin)
    assert ok.stdout == ok.stderr == ""
    args = next(line for line in (logs / "prune.log").read_text().splitlines() if line.startswith("args: "))
    assert args.endswith(" prune")
    bad = _run_cron(line, fake_bin, rc=3)
    assert bad.stdout.startswith("toolkit prune exited with 3")
    assert f"exited with 3 (see {logs / 'prune.log'})" in bad.stdout


def test_a_schedule_name_names_every_file(tmp_path: Path, fake_bin: Path) -> None:
    sched = spec(tmp_path, name="dc1", retention=RETENTION)
    units = systemd_units(sched)
    assert [u.name for u in units] == [
        f"appstack-toolkit-dc1-{job}.{kind}"
        for job in ("snapshot", "verify", "verify-data", "prune")
        for kind in ("service", "timer")
    ]
    assert unit(units, "appstack-toolkit-dc1-snapshot.service")["Unit"]["Description"].startswith(
        "AppStack toolkit dc1: "
    )
    assert unit(units, "appstack-toolkit-dc1-prune.timer")["Unit"]["Description"].startswith(
        "AppStack toolkit dc1 timer: "
    )
    cron = cron_file(spec(tmp_path, name="dc1", command=(str(fake_bin / "toolkit"),)), log_dir=tmp_path / "log")
    assert cron.name == "appstack-toolkit-dc1"
    assert cron.text.startswith("# /etc/cron.d/appstack-toolkit-dc1,")
    # Each schedule keeps its own cron logs, and its failure line says which schedule failed.
    (tmp_path / "log").mkdir()
    snapshot = next(line for line in cron.text.splitlines() if line.startswith("30 2 "))
    r = _run_cron(snapshot, fake_bin, rc=1)
    assert r.stdout.strip() == (
        f"appstack-toolkit-dc1: toolkit snapshot exited with 1 (see {tmp_path / 'log' / 'dc1-snapshot.log'})"
    )
    assert [p.name for p in (tmp_path / "log").iterdir()] == ["dc1-snapshot.log"]


def test_default_names_do_not_change(tmp_path: Path) -> None:
    # Existing installations regenerate the very same files: same names, and no schedule name in the text.
    for kw in ({}, {"retention": RETENTION}):
        units = systemd_units(spec(tmp_path, **kw))
        assert all(u.name.startswith("appstack-toolkit-") and u.name.count("-") in (2, 3) for u in units)
        assert all(
            "Description=AppStack toolkit: " in u.text or "Description=AppStack toolkit timer: " in u.text
            for u in units
        )
    assert cron_file(spec(tmp_path)).name == "appstack-toolkit"
    assert "/var/log/appstack-toolkit/snapshot.log" in cron_file(spec(tmp_path)).text


def test_two_named_schedules_share_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "units"
    cron_dir = tmp_path / "cron.d"
    written: dict[str, list[Path]] = {}
    for name in ("dc1", "dc2"):
        sched = spec(tmp_path, config=tmp_path / f"{name}.toml", repository=tmp_path / name, name=name)
        written[name] = install(systemd_units(sched), directory) + install([cron_file(sched)], cron_dir)
    # The unnamed set can live next to them too.
    written["default"] = install(systemd_units(spec(tmp_path, retention=RETENTION)), directory)
    files = [p for paths in written.values() for p in paths]
    assert len(set(files)) == len(files) == 6 + 1 + 6 + 1 + 8
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in files if p.parent == directory)
    assert sorted(p.name for p in cron_dir.iterdir()) == ["appstack-toolkit-dc1", "appstack-toolkit-dc2"]
    for name in ("dc1", "dc2"):
        for path in written[name]:
            text = path.read_text()
            other = "dc2" if name == "dc1" else "dc1"
            if path.suffix == ".timer":
                assert f"Description=AppStack toolkit {name} timer: " in text, path
                continue
            assert str(tmp_path / f"{name}.toml") in text, path  # nothing of the other site overwrote it
            assert str(tmp_path / f"{other}.toml") not in text, path
            if path.suffix == ".service":
                argv = exec_argv(parse(text)["Service"]["ExecStart"])
                assert argv[argv.index("--repo") + 1] == str(tmp_path / name)
        cron = (cron_dir / f"appstack-toolkit-{name}").read_text()
        assert f"/var/log/appstack-toolkit/{name}-snapshot.log" in cron


SHARED_SOURCE = "[ ! -r /etc/appstack-toolkit/env ] || . /etc/appstack-toolkit/env; "


def test_a_named_schedule_reads_the_shared_env_file_then_its_own(tmp_path: Path) -> None:
    named = spec(tmp_path, name="dc1", retention=RETENTION)
    for job in named.jobs:
        service = unit(systemd_units(named), f"appstack-toolkit-dc1-{job.name}.service")["Service"]
        assert service["EnvironmentFile"].splitlines() == [
            "-/etc/appstack-toolkit/env",
            "-/etc/appstack-toolkit/dc1.env",
        ]
        line = cron_line(named, job)
        own = "[ ! -r /etc/appstack-toolkit/dc1.env ] || . /etc/appstack-toolkit/dc1.env; "
        assert f" (set -a; {SHARED_SOURCE}{own}set +a; exec " in line
        assert cron_file(named).text.count(line) == 1
    assert named.env_files == (Path("/etc/appstack-toolkit/env"), Path("/etc/appstack-toolkit/dc1.env"))
    # Without a name: the one shared file, exactly as before.
    plain = spec(tmp_path, retention=RETENTION)
    assert plain.env_files == (ENV_FILE,)
    for job in plain.jobs:
        text = next(u.text for u in systemd_units(plain) if u.name == f"appstack-toolkit-{job.name}.service")
        assert [line for line in text.splitlines() if "Environment" in line] == [
            "EnvironmentFile=-/etc/appstack-toolkit/env"
        ]
        assert f" (set -a; {SHARED_SOURCE}set +a; exec " in cron_line(plain, job)
        assert ".env" not in cron_line(plain, job)
    # A file given to the schedule is the only one its jobs read, named or not.
    given = spec(tmp_path, name="dc1", env_file=tmp_path / "secrets")
    assert unit(systemd_units(given), "appstack-toolkit-dc1-snapshot.service")["Service"]["EnvironmentFile"] == (
        f"-{tmp_path / 'secrets'}"
    )
    line = cron_line(given, JOBS[0])
    assert f"(set -a; [ ! -r {tmp_path / 'secrets'} ] || . {tmp_path / 'secrets'}; set +a; " in line
    assert "/etc/appstack-toolkit" not in line


def test_the_cli_names_the_env_files_of_a_named_schedule(toolkit: Toolkit, tmp_path: Path) -> None:
    toolkit("init")
    config = tmp_path / "dc2.toml"
    config.write_text(SITE.format(ds=tmp_path / "ds1"))
    me = getpass.getuser()
    data = toolkit.json("--config", str(config), "schedule", "--name", "dc2")
    assert data["env_files"] == ["/etc/appstack-toolkit/env", "/etc/appstack-toolkit/dc2.env"]
    assert toolkit.json("--config", str(config), "schedule")["env_files"] == ["/etc/appstack-toolkit/env"]
    secrets = "secrets: /etc/appstack-toolkit/env, then /etc/appstack-toolkit/dc2.env (KEY=value lines, "
    r = toolkit("--config", str(config), "schedule", "--name", "dc2", "--install", str(tmp_path / "units"))
    assert r.exit_code == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("secrets: "))
    assert line.startswith(secrets) and "mode 0600" in line and "owned by" not in line
    # cron sources the files as the job's user: they must be readable by it.
    r = toolkit("--config", str(config), "schedule", "--name", "dc2", "--cron", "--install", str(tmp_path / "cron"))
    line = next(line for line in r.stdout.splitlines() if line.startswith("secrets: "))
    assert line.startswith(secrets) and f"mode 0600, owned by {me}" in line
    # Without a name the output is what it was: the shared file is the one the guides set up.
    r = toolkit("--config", str(config), "schedule", "--install", str(tmp_path / "plain"))
    assert r.exit_code == 0 and "secrets:" not in r.stdout


def test_a_cron_job_takes_the_value_of_its_own_env_file_over_the_shared_one(
    tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.setattr(schedule, "ENV_DIR", etc)
    (etc / "env").write_text("AVM_PASSWORD=shared\nHTTPS_PROXY=http://proxy:3128\n")
    (etc / "dc1.env").write_text("AVM_PASSWORD='dc1 secret'\n")
    (etc / "dc2.env").write_text("AVM_PASSWORD=dc2\n")
    tk = fake_bin / "toolkit"
    tk.write_text('#!/bin/sh\necho "password=$AVM_PASSWORD proxy=$HTTPS_PROXY"\n')
    logs = tmp_path / "log"
    logs.mkdir()

    def run(name: str | None) -> str:
        sched = spec(tmp_path, command=(str(tk),), name=name)
        assert cron_line(sched, JOBS[0], logs) in cron_file(sched, log_dir=logs).text
        r = _run_cron(cron_line(sched, JOBS[0], logs), fake_bin)
        assert r.returncode == 0 and r.stdout == r.stderr == "", r.stdout + r.stderr
        return (logs / f"{'' if name is None else name + '-'}snapshot.log").read_text()

    # Each site gets its own password under the same variable, and the shared proxy.
    assert run("dc1") == "password=dc1 secret proxy=http://proxy:3128\n"
    assert run("dc2") == "password=dc2 proxy=http://proxy:3128\n"
    assert run(None) == "password=shared proxy=http://proxy:3128\n"
    # A named schedule without a file of its own runs on the shared one; with neither file, on nothing.
    assert run("dc3") == "password=shared proxy=http://proxy:3128\n"
    (etc / "env").unlink()
    assert run("dc1") == "password=dc1 secret proxy=\n"
    assert run("dc3") == "password= proxy=\n"


@pytest.mark.parametrize("name", ["", "dc 1", "dc.1", "dc@1", "-dc1", "dc1-", "_dc1", "../dc1", "dc1\n", "a" * 33])
def test_a_bad_schedule_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ScheduleNameInvalid):
        systemd_units(spec(tmp_path, name=name))
    with pytest.raises(ScheduleNameInvalid):
        cron_file(spec(tmp_path, name=name))


@pytest.mark.parametrize("name", ["dc1", "DC2", "site_b", "dc-east-1", "a" * 32, "7"])
def test_good_schedule_names(tmp_path: Path, name: str) -> None:
    assert systemd_units(spec(tmp_path, name=name))[0].name == f"appstack-toolkit-{name}-snapshot.service"


def test_the_cli_names_units_and_schedules_prune(toolkit: Toolkit, tmp_path: Path) -> None:
    toolkit("init")
    plain = tmp_path / "plain.toml"
    plain.write_text(SITE.format(ds=tmp_path / "ds1"))
    kept = tmp_path / "kept.toml"
    kept.write_text(SITE.format(ds=tmp_path / "ds1") + "\n[retention]\nkeep_daily = 14\nkeep_monthly = 6\n")

    # No [retention]: no prune job, and schedule says so.
    r = toolkit("--config", str(plain), "schedule")
    assert r.exit_code == 0, r.stderr
    assert "prune" not in r.stdout.replace("# no prune job", "").replace("prune by hand", "")
    assert r.stdout.rstrip().splitlines()[-1].startswith(f"# no prune job: {plain} has no [retention]")
    data = toolkit.json("--config", str(plain), "schedule")
    assert [j["name"] for j in data["jobs"]] == ["snapshot", "verify", "verify-data"]
    assert data["warnings"] and "no [retention]" in data["warnings"][0]
    r = toolkit("--config", str(plain), "schedule", "--install", str(tmp_path / "plain-units"))
    assert "no prune job" in r.stdout

    # With [retention], under a name, into the same directory as another schedule.
    units = tmp_path / "units"
    r = toolkit("--config", str(plain), "schedule", "--install", str(units))
    assert r.exit_code == 0, r.stderr
    data = toolkit.json("--config", str(kept), "schedule", "--name", "dc2", "--install", str(units))
    assert data["name"] == "dc2" and data["warnings"] == []
    assert data["jobs"][-1] == {"name": "prune", "args": ["prune"]}
    assert data["timers"] == [f"appstack-toolkit-dc2-{j}.timer" for j in ("snapshot", "verify", "verify-data", "prune")]
    assert len(list(units.iterdir())) == 6 + 8
    assert (units / "appstack-toolkit-snapshot.service").read_text() != (
        units / "appstack-toolkit-dc2-snapshot.service"
    ).read_text()
    r = toolkit("--config", str(kept), "schedule", "--name", "dc2", "--install", str(units))
    assert f"systemctl enable --now {' '.join(data['timers'])}" in r.stdout
    assert "no prune job" not in r.stdout
    cron = toolkit.json("--config", str(kept), "schedule", "--name", "dc2", "--cron")
    assert [f["name"] for f in cron["files"]] == ["appstack-toolkit-dc2"]
    assert "0 12 * * 6 " in cron["files"][0]["text"]

    r = toolkit("--config", str(kept), "schedule", "--name", "dc 2")
    assert r.exit_code == ScheduleNameInvalid.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        "error: 'dc 2' cannot name timers: use up to 32 letters, digits, - and _, starting and ending with a letter "
        "or digit"
    )
    assert "Traceback" not in r.stderr


def _config(tmp_path: Path, retention: str) -> Path:
    path = tmp_path / "retention.toml"
    path.write_text(
        retention + "\n" + SITE.format(ds=tmp_path / "ds1")
    )  # before the site: `retention = 7` is top-level
    return path


def test_retention_in_the_configuration(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""))
    assert config is not None and config.retention is None
    config = load_config(_config(tmp_path, "[retention]\nkeep_last = 2\nkeep_weekly = 4\nkeep_deleted_days = 90\n"))
    assert config is not None
    assert config.retention == RetentionConfig(keep_last=2, keep_weekly=4, keep_deleted_days=90.0)


@pytest.mark.parametrize(
    ("retention", "message"),
    [
        ("retention = 7\n", r"\[retention\]: must be a table"),
        ("[retention]\n", "the policy keeps no snapshot"),
        ("[retention]\nkeep_daily = 0\nkeep_deleted_days = 5\n", "the policy keeps no snapshot"),
        ("[retention]\nkeep_daily = -1\n", "keep_daily must be a whole number, 0 or more"),
        ("[retention]\nkeep_daily = 1.5\n", "keep_daily must be a whole number"),
        ("[retention]\nkeep_weekly = true\n", "keep_weekly must be a whole number"),
        ('[retention]\nkeep_monthly = "12"\n', "keep_monthly must be a whole number"),
        ("[retention]\nkeep_dayly = 14\n", r"unknown key\(s\): keep_dayly \(known: keep_last, keep_daily"),
        ("[retention]\nkeep_daily = 1\nkeep_deleted_days = -1\n", "keep_deleted_days must be a number of days"),
        ("[retention]\nkeep_daily = 1\nkeep_deleted_days = inf\n", "keep_deleted_days must be a number of days"),
        ('[retention]\nkeep_daily = 1\nkeep_deleted_days = "30"\n', "keep_deleted_days must be a number"),
    ],
)
def test_a_bad_retention_is_refused(tmp_path: Path, retention: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        load_config(_config(tmp_path, retention))
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2


def test_a_bad_retention_stops_schedule_with_exit_2(toolkit: Toolkit, tmp_path: Path) -> None:
    r = toolkit("--config", str(_config(tmp_path, "[retention]\nkeep_daily = -3\n")), "schedule")
    assert r.exit_code == ConfigError.exit_code == 2
    assert r.stderr.splitlines()[0].endswith("[retention]: keep_daily must be a whole number, 0 or more")


def test_the_template_retention_example_is_valid(tmp_path: Path) -> None:
    lines = TEMPLATE.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("# [retention]")))
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    path = tmp_path / "template.toml"
    path.write_text(TEMPLATE.replace("\n".join(f"# {b}" for b in block), "\n".join(block)))
    config = load_config(path)
    assert config is not None
    assert config.retention == RetentionConfig(keep_daily=14, keep_weekly=8, keep_monthly=12, keep_deleted_days=365.0)
    assert load_config(_write(tmp_path / "as-is.toml", TEMPLATE)).retention is None  # type: ignore[union-attr]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
