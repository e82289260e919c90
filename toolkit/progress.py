"""Progress on stderr: a live line on a terminal, sparse log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Receives job events; draws them for a person, never on stdout."""

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None, total_bytes: int = 0) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = not quiet and self.stream.isatty()
        self.done = 0
        self.total = total_bytes
        self.current = ""
        self.started = time.monotonic()
        self._last_draw = 0.0

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.quiet:
            return
        if kind == "bytes":
            self.done += int(data["n"])
            self._draw()
        elif kind == "volume_start":
            self.current = str(data["key"])
            self.total = max(self.total, self.done + int(data.get("size", 0)))
            self._draw(force=True)
        elif kind == "volume":
            status = data.get("state") or data.get("status")
            reason = data.get("reason") or data.get("error") or data.get("note")
            self._line(f"{status:>10}  {data['key']}" + (f"  ({reason})" if reason else ""))
        elif kind == "datastore":
            self._line(f"datastore {data['datastore']}: {data['volumes']} volume(s)")
        elif kind == "message":
            self._line(str(data["text"]))

    def _line(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        rate = self.done / max(now - self.started, 1e-6)
        self.stream.write(f"\r\033[K{human_bytes(self.done)} at {human_bytes(rate)}/s  {self.current[-60:]}")
        self.stream.flush()

    def finish(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()
