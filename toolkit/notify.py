"""Tell someone how a job ended: the ``[notify]`` command and webhook (docs/operations.md, "Notifications").

After ``snapshot``, ``verify``, ``restore``, ``prune`` or ``copy``, the job's
summary (the command, its exit code, and the JSON document the command printed
or the error it stopped with) goes to the configured command on its standard
input and/or is POSTed to the configured URL: on a non-zero exit by default, on
every run with ``on = "always"``. A notifier that fails or hangs costs a
warning, never the job's exit code; nothing here raises.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from toolkit import __version__
from toolkit.config import NotifyConfig

NOTIFIED_COMMANDS: Final = frozenset({"snapshot", "verify", "restore", "prune", "copy"})
SUMMARY_VERSION: Final = 1  # bumped when a field of the summary changes meaning
STDERR_SHOWN: Final = 200  # characters of a failing command's last stderr line put in the warning


def is_wanted(notify: NotifyConfig | None, command: str | None, exit_code: int) -> bool:
    """Whether this run of ``command`` is to be notified."""
    if notify is None or command not in NOTIFIED_COMMANDS:
        return False
    return notify.on == "always" or exit_code != 0


def summary(
    command: str, exit_code: int, result: dict[str, Any] | None, repository: str | None, now: datetime
) -> dict[str, Any]:
    """What a notifier receives: only the job's own JSON result, which carries no secret."""
    return {
        "summary_version": SUMMARY_VERSION,
        "command": command,
        "exit_code": exit_code,
        "ok": exit_code == 0,
        "host": socket.gethostname(),
        "repository": repository,
        "finished_at": now.astimezone(UTC).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
        "result": result,
    }


def _where(url: str) -> str:
    """The URL without path, query or credentials: a webhook's path is often its token."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def run_command(command: str, timeout_s: float, body: bytes) -> str | None:
    """Run ``command`` (no shell) with ``body`` on stdin; a warning, or None when it succeeded."""
    argv = shlex.split(command)
    try:
        done = subprocess.run(
            argv,
            input=body,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"notify command {argv[0]} did not finish within {timeout_s:g} s; it was stopped"
    except OSError as exc:
        return f"notify command {argv[0]} could not be run: {exc.strerror or type(exc).__name__}"
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        said = f": {lines[-1][:STDERR_SHOWN]}" if lines else ""
        return f"notify command {argv[0]} exited with {done.returncode}{said}"
    return None


def post_webhook(url: str, notify: NotifyConfig, body: bytes) -> str | None:
    """POST ``body`` as JSON to ``url``, TLS verified; a warning, or None on a 2xx answer."""
    import requests

    try:
        response = requests.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", "User-Agent": f"appstack-toolkit/{__version__}"},
            timeout=notify.timeout_s,
            verify=str(notify.ca_bundle) if notify.ca_bundle is not None else True,
            allow_redirects=False,
        )
    except requests.exceptions.SSLError:
        return f"notify webhook {_where(url)}: TLS certificate not trusted (set ca_bundle in [notify])"
    except requests.exceptions.Timeout:
        return f"notify webhook {_where(url)}: no answer within {notify.timeout_s:g} s"
    except requests.exceptions.RequestException as exc:
        return f"notify webhook {_where(url)}: {type(exc).__name__}"
    if not 200 <= response.status_code < 300:
        return f"notify webhook {_where(url)}: HTTP {response.status_code}"
    return None


def send(notify: NotifyConfig, data: dict[str, Any]) -> list[str]:
    """Send ``data`` to every configured notifier; the warnings of those that failed."""
    body = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    warnings = []
    if notify.command is not None:
        warnings.append(run_command(notify.command, notify.timeout_s, body))
    if notify.url is not None:
        warnings.append(post_webhook(notify.url, notify, body))
    return [w for w in warnings if w is not None]
