"""What the lab's server processes (sshd, moto's S3 server, vcsim) share: their log's tail and a firm stop."""

from __future__ import annotations

import subprocess
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
