"""Progress of the long commands: JSON-lines events against their schema, the terminal and log views.

Real commands run in subprocesses on a lab datastore; every event they emit is validated against
docs/progress-v1.schema.json, and the order and the counters are checked as docs/progress.md states.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from catalog.errors import Locked
from toolkit.lab.corpus import make_datastore, make_volume
from toolkit.progress import ProgressFileUnwritable

from ..conftest import run_toolkit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "progress-v1.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
COUNTERS = ("bytes_done", "bytes_processed", "volumes_done")


def runs(path: Path) -> list[list[dict[str, Any]]]:
    """The events of a --progress-json file, split into runs (each begins with its start)."""
    out: list[list[dict[str, Any]]] = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        errors = sorted(VALIDATOR.iter_errors(event), key=str)
        assert not errors, f"{event}: {[e.message for e in errors]}"
        if event["event"] == "start":
            out.append([])
        out[-1].append(event)
    return out


def check_run(events: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """The order and counter rules of docs/progress.md; returns the end event."""
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"
    assert [e["event"] for e in events].count("start") == 1 and [e["event"] for e in events].count("end") == 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["command"] == command for e in events)
    last: dict[str, float] = {"elapsed_s": 0.0}
    totals: dict[str, int] = {}
    open_volumes: set[str] = set()
    ended: set[str] = set()
    for e in events:
        for key in ("elapsed_s", *COUNTERS):
            if key in e:
                assert e[key] >= last.get(key, 0), (key, e, last)
                last[key] = e[key]
        for key in ("bytes_total", "volumes_total"):
            if e.get(key) is not None:
                assert e[key] >= totals.get(key, 0), (key, e)
                totals[key] = e[key]
        if "bytes_done" in e and totals.get("bytes_total") is not None:
            assert e["bytes_done"] <= totals["bytes_total"], e
        if e["event"] == "volume-start":
            assert e["volume"] not in open_volumes | ended
            open_volumes.add(e["volume"])
        elif e["event"] == "volume-end":
            assert e["volume"] not in ended
            open_volumes.discard(e["volume"])
            ended.add(e["volume"])
    assert not open_volumes, f"started, never ended: {open_volumes}"
    end = events[-1]
    if end["volumes_total"] is not None:
        assert end["volumes_done"] == end["volumes_total"] == len(ended)
    return end


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """A datastore of four volumes (one AppStack in a folder with a space) and a repository path."""
    ds1 = tmp_path / "ds1"
    make_datastore(ds1, count=3, size_mib=8, seed=3, real=False)
    repo = tmp_path / "repo"
    assert run_toolkit("--repo", str(repo), "init").returncode == 0
    return ds1, repo


def test_every_event_of_snapshot_verify_restore_and_prune_follows_the_schema(site, tmp_path: Path) -> None:
    ds1, repo = site
    events = tmp_path / "events.jsonl"
    common = ["--repo", str(repo), "--progress-json", str(events), "--progress-interval", "0"]

    def json_of(*args: str) -> dict[str, Any]:
        proc = run_toolkit(*common, "--json", *args)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = json_of("snapshot", f"ds1={ds1}")
    # one volume changes, one is deleted: a second snapshot reads one, skips two and records a deletion
    office = next(ds1.rglob("Office*-flat.vmdk"))
    with office.open("r+b") as f:
        f.write(os.urandom(65536))
    os.utime(office, ns=(1, 1_700_000_000_000_000_000))
    gone = next(ds1.rglob("Adobe*.vmdk"))
    for p in gone.parent.glob(gone.name.removesuffix(".vmdk") + "*"):
        p.unlink()
    second = json_of("snapshot", f"ds1={ds1}")
    read_all = json_of("verify", "--read-data")
    by_volume = json_of("verify", "--volume", "Office*")
    restored = json_of("restore", "--as-of", "now", "--to", str(tmp_path / "out"))
    again = json_of("restore", "--as-of", "now", "--to", str(tmp_path / "out"))
    planned = json_of("restore", "--as-of", "now", "--to", str(tmp_path / "out2"), "--dry-run")
    json_of("prune", "--keep-last", "1")

    found = runs(events)
    commands = ["snapshot", "snapshot", "verify", "verify", "restore", "restore", "restore", "prune"]
    assert [r[0]["command"] for r in found] == commands
    ends = [check_run(r, c) for r, c in zip(found, commands, strict=True)]
    assert all(e["ok"] and e["error"] is None for e in ends)

    snap1, snap2 = found[0], found[1]
    assert any(e["event"] == "progress" for e in snap1)
    assert ends[0]["bytes_processed"] == first["stats"]["bytes_read"] > 0
    assert ends[0]["bytes_done"] == ends[0]["bytes_total"] == sum(v["size"] for v in first["volumes"])
    assert ends[0]["new_bytes"] == first["stats"]["new_raw_bytes"]
    assert ends[0]["stored_bytes"] == first["stats"]["new_stored_bytes"]
    plan = next(e for e in snap1 if e["event"] == "plan")
    assert plan["datastore"] == "ds1" and plan["volumes"] == 4
    status = {e["volume"]: e["status"] for e in snap2 if e["event"] == "volume-end"}
    assert status == {v["key"]: v["state"] for v in second["volumes"]}
    assert sorted(status.values()) == ["changed", "deleted", "unchanged", "unchanged"]
    assert ends[1]["bytes_processed"] == second["stats"]["bytes_read"]
    assert ends[1]["volumes_done"] == ends[1]["volumes_total"] == 4  # three listed, one deleted

    assert ends[2]["bytes_processed"] == read_all["bytes_read"] == ends[2]["bytes_total"]
    assert ends[3]["bytes_processed"] == by_volume["bytes_read"] > 0
    assert ends[4]["bytes_processed"] == restored["bytes_written"] > 0
    starts = [e["event"] for e in found[4] if e["event"] in ("volume-start", "volume-end")]
    assert starts.count("volume-start") == 3  # Office, Chrome, the writable
    assert {e["status"] for e in found[5] if e["event"] == "volume-end"} == {"in place"}
    assert again["ok"]
    assert [e["status"] for e in found[6] if e["event"] == "volume-end"] == ["planned"] * 3
    assert planned["dry_run"] and ends[6]["bytes_processed"] == 0
    kinds = [e["event"] for e in found[7]]
    assert kinds[:2] == ["start", "plan"] and kinds[-1] == "end" and set(kinds[2:-1]) <= {"progress"}
    assert ends[7]["bytes_processed"] == found[7][1]["bytes"]  # every live byte it planned to copy, copied


def test_the_schema_refuses_what_the_format_does_not_allow() -> None:
    good = {
        "v": 1,
        "seq": 2,
        "event": "volume-start",
        "command": "snapshot",
        "time": "2026-11-20T02:31:07.412Z",
        "elapsed_s": 0.5,
        "volume": "ds1/cloudvolumes/apps/x.vmdk",
        "size_bytes": 10,
    }
    assert VALIDATOR.is_valid(good)
    for bad in (
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "size_bytes"},
        {**good, "size_bytes": -1},
        {**good, "v": 2},
        {**good, "event": "volume-begin"},
        {**good, "time": "2026-11-20 02:31:07"},
        {**good, "event": "end"},
    ):
        assert not VALIDATOR.is_valid(bad), bad


def test_a_run_that_fails_still_ends_with_the_error(site, tmp_path: Path) -> None:
    ds1, repo = site
    lock = {"owner": "appstack", "pid": 1, "host": "backup2.example.com", "command": "prune", "since": "2026-11-20"}
    (repo / "locks" / "writer").write_text(json.dumps(lock))
    events = tmp_path / "events.jsonl"
    proc = run_toolkit("--repo", str(repo), "--progress-json", str(events), "snapshot", f"ds1={ds1}")
    assert proc.returncode == Locked.exit_code
    (run,) = runs(events)
    assert [e["event"] for e in run] == ["start", "end"]
    assert run[-1]["ok"] is False
    assert run[-1]["error"]["code"] == Locked.code
    assert "backup2.example.com" in run[-1]["error"]["message"]


def test_progress_json_on_stderr_leaves_stdout_to_the_result(site) -> None:
    ds1, repo = site
    proc = run_toolkit("--repo", str(repo), "--progress-json", "-", "--json", "snapshot", f"ds1={ds1}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), proc.stderr  # no human progress mixed in
    events = [json.loads(line) for line in lines]
    assert all(VALIDATOR.is_valid(e) for e in events)
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"


def test_without_a_terminal_progress_is_plain_lines_and_honours_quiet_and_verbose(site, tmp_path: Path) -> None:
    ds1, repo = site
    plain = run_toolkit("--repo", str(repo), "snapshot", f"ds1={ds1}")
    assert plain.returncode == 0
    assert "\x1b" not in plain.stderr and "\r" not in plain.stderr
    assert "datastore ds1: 4 volume(s), 32.0 MiB" in plain.stderr
    assert re.search(r"^\s+new  ds1/cloudvolumes/apps/Office!20!2016\.vmdk$", plain.stderr, re.M), plain.stderr
    assert "start" not in plain.stderr
    verbose = run_toolkit("--repo", str(repo), "-v", "snapshot", "--rehash", f"ds1={ds1}")
    assert re.search(r"^\s+start  ds1/cloudvolumes/apps/Office!20!2016\.vmdk \(8\.0 MiB\)$", verbose.stderr, re.M)
    assert "\x1b" not in verbose.stderr
    quiet = run_toolkit("--repo", str(repo), "-q", "snapshot", f"ds1={ds1}")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.startswith("snapshot ")


def test_the_log_file_gets_timestamped_lines_even_when_quiet(site, tmp_path: Path) -> None:
    ds1, repo = site
    log = tmp_path / "logs" / "toolkit.log"
    log.parent.mkdir()
    for _ in range(2):  # appended to
        proc = run_toolkit("--repo", str(repo), "-q", "--log-file", str(log), "snapshot", f"ds1={ds1}")
        assert proc.returncode == 0 and proc.stderr == ""
    lines = log.read_text().splitlines()
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")
    assert lines and all(stamp.match(line) for line in lines), lines
    assert sum(line.endswith("INFO toolkit.progress: snapshot started") for line in lines) == 2
    assert any(line.endswith("snapshot: new  ds1/cloudvolumes/apps/Office!20!2016.vmdk") for line in lines)
    assert any(line.endswith("snapshot: unchanged  ds1/cloudvolumes/apps/Office!20!2016.vmdk") for line in lines)
    assert log.stat().st_mode & 0o777 == 0o600


def test_unwritable_progress_and_log_files_are_bad_input(site, tmp_path: Path) -> None:
    ds1, repo = site
    missing = tmp_path / "no-such-dir" / "x"
    for option in ("--progress-json", "--log-file"):
        proc = run_toolkit("--repo", str(repo), option, str(missing), "snapshot", f"ds1={ds1}")
        assert proc.returncode == ProgressFileUnwritable.exit_code, proc.stderr
        assert proc.stderr.startswith("error: cannot write") and "Traceback" not in proc.stderr
    assert run_toolkit("--repo", str(repo), "--json", "snapshots").stdout.count('"id"') == 0  # nothing ran


def _run_on_terminal(args: list[str]) -> tuple[int, bytes, str]:
    """Run the toolkit with stderr on a pseudo-terminal: (exit code, what the terminal got, stdout)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    screen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.stdout is not None
    stdout = proc.stdout.read().decode()
    return proc.wait(timeout=60), screen, stdout


def test_on_a_terminal_progress_is_live_and_stdout_keeps_the_plain_result(site, tmp_path: Path) -> None:
    ds1, repo = site
    big = tmp_path / "big"
    make_volume(big, "cloudvolumes/apps/Big.vmdk", size_mib=64, seed=9, real=False)
    rc, screen, stdout = _run_on_terminal(["--repo", str(repo), "snapshot", f"ds1={ds1}", f"big={big}"])
    assert rc == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # drawn and redrawn in place
    assert "snapshot" in text and "MiB" in text
    assert "datastore ds1: 4 volume(s)" in text and "new  big/cloudvolumes/apps/Big.vmdk" in text
    assert stdout.startswith("snapshot ") and "\x1b" not in stdout
    assert "\x1b[?25h" in text  # the cursor is given back


def test_a_reader_that_goes_away_stops_the_events_not_the_job(site, tmp_path: Path) -> None:
    ds1, repo = site
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["sh", "-c", f"head -c 10 < {fifo} > /dev/null"])
    try:
        proc = run_toolkit(
            "--repo", str(repo), "--progress-json", str(fifo), "--progress-interval", "0", "snapshot", f"ds1={ds1}"
        )
    finally:
        reader.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert run_toolkit("--repo", str(repo), "--json", "snapshots").stdout.count('"id"') == 1
