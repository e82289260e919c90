"""``[notify]``: a job's JSON summary reaches a webhook and a command; a broken notifier never changes the exit."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from toolkit.config import ConfigError
from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit

SECRET = "planted-s3cret-Zq81"  # noqa: S105 (a value to look for, not a credential)
URL_TOKEN = "hook-token-Kx7"  # noqa: S105 (a webhook URL's path is often its token)


class Hook:
    """A real HTTP server on loopback that records every POST."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.paths.append(self.path)
                hook.bodies.append(json.loads(body))
                hook.raw = body
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.raw = b""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{URL_TOKEN}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def repo(toolkit: Toolkit, tmp_path: Path) -> Toolkit:
    ds = tmp_path / "ds1"
    make_volume(ds, "cloudvolumes/apps/Visio.vmdk", size_mib=4, seed=3, real=True)
    toolkit("init")
    assert toolkit("snapshot", str(ds)).exit_code == 0
    return toolkit


def write_config(tmp_path: Path, notify: str) -> Path:
    """A configuration with a [notify] section and a planted secret (an inline manager password)."""
    path = tmp_path / "toolkit.toml"
    path.write_text(
        f"{notify}\n\n"
        "[sites.dc1.manager]\n"
        'url = "https://avm.dc1.example.com"\n'
        'user = "svc-backup"\n'
        f'password = "{SECRET}"\n'
        "\n[sites.dc1.datastores.ds1]\n"
        'transport = "local"\n'
        f'path = "{tmp_path / "ds1"}"\n'
    )
    path.chmod(0o600)
    return path


def recorder(tmp_path: Path, name: str = "received.json") -> tuple[str, Path]:
    """A notify command (no shell) that copies its stdin to a file."""
    script = tmp_path / "record.py"
    target = tmp_path / name
    script.write_text(f"import sys, pathlib\npathlib.Path({str(target)!r}).write_bytes(sys.stdin.buffer.read())\n")
    return f"{sys.executable} {script}", target


def damage(toolkit: Toolkit) -> None:
    """Flip a byte in the middle of the largest pack."""
    pack = max((toolkit.repo / "packs").glob("*/*"), key=lambda p: p.stat().st_size)
    buf = bytearray(pack.read_bytes())
    buf[len(buf) // 2] ^= 0x01
    pack.write_bytes(bytes(buf))


def test_failing_verify_reaches_webhook_and_command(repo: Toolkit, hook: Hook, tmp_path: Path) -> None:
    command, received = recorder(tmp_path)
    config = write_config(tmp_path, f'[notify]\ncommand = "{command}"\nurl = "{hook.url}"')
    damage(repo)
    r = repo("--config", str(config), "verify", "--read-data")
    assert r.exit_code == 1, r.stdout + r.stderr
    assert "warning" not in r.stderr
    assert hook.paths == [f"/hooks/{URL_TOKEN}"]
    sent = hook.bodies[0]
    assert sent["command"] == "verify" and sent["exit_code"] == 1 and sent["ok"] is False
    assert sent["repository"] == str(repo.repo)
    assert sent["result"]["level"] == "data" and sent["result"]["ok"] is False
    assert {p["kind"] for p in sent["result"]["problems"]} >= {"pack"}
    assert json.loads(received.read_text()) == sent  # the command got the same summary on stdin
    assert SECRET.encode() not in hook.raw and SECRET not in received.read_text()


def test_default_notifies_problems_only(repo: Toolkit, hook: Hook, tmp_path: Path) -> None:
    command, received = recorder(tmp_path)
    config = write_config(tmp_path, f'[notify]\ncommand = "{command}"\nurl = "{hook.url}"')
    assert repo("--config", str(config), "verify").exit_code == 0
    assert repo("--config", str(config), "snapshots").exit_code == 0
    assert hook.bodies == [] and not received.exists()
    # A job that did not run (no repository there) is a problem too: exit 2, with the error as its result.
    r = repo("--config", str(config), "--repo", str(tmp_path / "nowhere"), "prune", "--keep-last", "1")
    assert r.exit_code == 2
    assert [(b["command"], b["exit_code"], b["result"]["code"]) for b in hook.bodies] == [
        ("prune", 2, "store_not_found")
    ]


def test_on_always_notifies_success(repo: Toolkit, hook: Hook, tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[notify]\nurl = "{hook.url}"\non = "always"')
    r = repo("--config", str(config), "snapshot", str(tmp_path / "ds1"))
    assert r.exit_code == 0, r.stderr
    assert repo("--config", str(config), "verify").exit_code == 0
    # status is not a job: never notified, even when it exits 1 (no manager records for site dc1 here).
    assert repo("--config", str(config), "status").exit_code == 1
    assert [(b["command"], b["exit_code"], b["ok"]) for b in hook.bodies] == [
        ("snapshot", 0, True),
        ("verify", 0, True),
    ]
    assert hook.bodies[0]["result"]["volumes"][0]["state"] == "unchanged"


def test_failing_or_hanging_notifiers_keep_the_exit_code(repo: Toolkit, tmp_path: Path) -> None:
    dead = Hook(status=500)
    dead.close()  # nothing listens on its port any more
    config = write_config(tmp_path, f'[notify]\ncommand = "sleep 30"\nurl = "{dead.url}"\non = "always"\ntimeout = 1')
    r = repo("--config", str(config), "verify")
    assert r.exit_code == 0
    assert "warning: notify command sleep did not finish within 1 s" in r.stderr
    assert "warning: notify webhook http://127.0.0.1:" in r.stderr
    assert URL_TOKEN not in r.stderr and SECRET not in r.stderr + r.stdout

    damage(repo)
    config = write_config(tmp_path, f"[notify]\ncommand = \"{sys.executable} -c 'import sys; sys.exit(4)'\"")
    r = repo("--config", str(config), "verify", "--read-data")
    assert r.exit_code == 1
    assert f"warning: notify command {sys.executable} exited with 4" in r.stderr

    refusing = Hook(status=503)
    try:
        config = write_config(tmp_path, f'[notify]\nurl = "{refusing.url}"')
        r = repo("--config", str(config), "verify", "--read-data")
        assert r.exit_code == 1 and len(refusing.bodies) == 1
        assert "warning: notify webhook" in r.stderr and "HTTP 503" in r.stderr
    finally:
        refusing.close()


@pytest.mark.parametrize(
    ("notify", "detail"),
    [
        ('[notify]\nurl = "http://hooks.example.com/x"', "url must be https://"),
        ('[notify]\non = "always"', "give command, url or both"),
        ('[notify]\ncommand = "true"\non = "sometimes"', "on must be one of problem, always"),
        ('[notify]\ncommand = "true"\ntimeout = 0', "timeout must be a positive number"),
        ('[notify]\ncommand = "true"\nretries = 3', "unknown key(s): retries"),
    ],
)
def test_bad_notify_configuration_is_refused(repo: Toolkit, tmp_path: Path, notify: str, detail: str) -> None:
    config = write_config(tmp_path, notify)
    r = repo("--config", str(config), "snapshot")  # the configured sites: the configuration is read first
    assert r.exit_code == ConfigError.exit_code
    assert detail in r.stderr and len(r.stderr.splitlines()) == 2  # the error and its hint, no second word
    # A job that needs no configuration runs, and says why nobody was told.
    r = repo("--config", str(config), "snapshot", str(tmp_path / "ds1"))
    assert r.exit_code == 0
    last = r.stderr.splitlines()[-1]
    assert last.startswith("warning: no notification sent: configuration ") and detail in last
