"""What the lab's server processes (sshd, moto's S3 server, vcsim) share: their log's tail and a firm stop."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def log_tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of a server's log on one line, for a start-up error; empty when unreadable."""
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL when the process is still there after ``timeout_s``; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def launch(
    argv: list[str], log_path: Path, ready: Callable[[], bool], timeout_s: float, poll_s: float
) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start a server with its output in ``log_path`` and wait until ``ready()``.

    Returns (the process, "") once it answers, or (the process still running, why) when it did not
    answer in time (the caller stops it), or (None, why) when it exited early.
    """
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None, f"exited early; see {log_path}: {log_tail(log_path)}"
        if ready():
            return process, ""
        time.sleep(poll_s)
    return process, f"did not answer within {timeout_s} s"
