"""toolkit schedule: systemd units and a cron file that run the routine jobs correctly."""

from __future__ import annotations

import configparser
import getpass
import itertools
import os
import shlex
import shutil
import stat
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from toolkit.lab.corpus import make_volume
from toolkit.schedule import (
    ENV_FILE,
    JOBS,
    Schedule,
    ScheduleInvalid,
    check_user,
    cron_file,
    cron_line,
    format_units,
    install,
    repository_owner,
    systemd_units,
    timer_names,
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
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {s: dict(parser[s]) for s in parser.sections()}


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


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_calendars_weekly_and_monthly_verify_never_share_a_day() -> None:
    got = {}
    for job in JOBS:
        out = subprocess.run(
            ["systemd-analyze", "calendar", "--iterations=60", job.on_calendar],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
        ).stdout
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


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
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


def _run_cron(line: str, fake_bin: Path, *, rc: int = 0, day: str = "15") -> subprocess.CompletedProcess[str]:
    fields = line.split(" ", 6)
    command = fields[6]
    assert "%" not in command.replace("\\%", ""), "cron turns a bare % into a newline"
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "FAKE_RC": str(rc), "FAKE_DAY": day}
    return subprocess.run(
        ["/bin/sh", "-c", command.replace("\\%", "%")], capture_output=True, text=True, env=env, check=False
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
