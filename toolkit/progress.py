"""Progress of the long jobs: one sink for the jobs' events, and the views fed from it.

The jobs (``toolkit/ops``, and the byte callbacks of ``catalog``) report what they do
by calling a :class:`Progress` with ``(kind, data)``:

========================  ==============================================  ==========================================
kind                      data                                            sent
========================  ==============================================  ==========================================
``datastore``             ``datastore``, ``volumes``, ``sizes`` {key: n}  snapshot: a datastore was listed
``plan``                  ``volumes``, ``sizes`` {key: n} or ``bytes``    restore (and verify) before the work starts
``volume_start``          ``key``, ``size``                               a volume is read or written next
``bytes``                 ``n``                                           a chunk was read, written or checked
``stats``                 ``read_bytes``, ``new_bytes``, ``stored_bytes``  snapshot, cumulative, after each volume
``volume``                the volume's entry (``key``, ``state`` or       a volume is done
                          ``status``, ``reason``/``error``/``note``)
``message``               ``text``                                        a warning
========================  ==============================================  ==========================================

``bytes`` events count for the volume whose ``volume_start`` came from the same
thread (restore writes two volumes at once, each from its own thread).

:class:`Progress` keeps the counters and feeds the views: a live display (rich)
when stderr is a terminal, plain lines otherwise, the log (logger
``toolkit.progress``, which ``--log-file`` records), and versioned JSON-lines
events (``--progress-json``; the schema is docs/progress.md and
docs/progress-v1.schema.json).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import click

from catalog.errors import Error

log = logging.getLogger(__name__)

EVENTS_VERSION: Final = 1  # the "v" of every JSON-lines event; raised only for changes that break readers
EVENT_INTERVAL_S: Final = 1.0  # at most one "progress" event per second: enough for a monitor, small in a file
LINE_INTERVAL_S: Final = 60.0  # a plain progress line per minute: a night's snapshot stays readable in a journal
TICK_S: Final = 0.1  # counters are sampled and the display redrawn at most this often (chunks come far faster)
ETA_AFTER_S: Final = 2.0  # no ETA from the first moments: a few chunks say nothing about the rest
RATE_WINDOW_S: Final = 20.0  # throughput and ETA follow the last 20 s, so a slow volume shows quickly
LABEL_CHARS: Final = 32  # a volume's key on a terminal: its end, where the name is
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ProgressFileUnwritable(Error):
    template = "cannot write progress events to {path}: {detail}"
    hint = "give a file in a writable directory, or - for stderr"
    code = "progress_file_unwritable"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


# -- logging -------------------------------------------------------------------------------------------


class _UtcFormatter(logging.Formatter):
    """Log lines stamped with the UTC time in ISO 8601, to the millisecond."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LogFile(logging.FileHandler):
    """The --log-file handler: timestamped lines, appended, the file private to its owner."""

    def __init__(self, path: Path) -> None:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        except OSError as exc:
            raise LogFileUnwritable(path=path, detail=exc.strerror or str(exc)) from None
        super().__init__(path, mode="a", encoding="utf-8")
        self.setFormatter(_UtcFormatter(LOG_FORMAT))


class LogFileUnwritable(Error):
    template = "cannot write the log file {path}: {detail}"
    hint = "give a file in a writable directory with --log-file"
    code = "log_file_unwritable"


def _not_progress(record: logging.LogRecord) -> bool:
    """stderr shows progress through the display itself, not through logging."""
    return record.name != __name__


def setup_logging(*, quiet: bool, verbose: int, log_file: Path | None) -> None:
    """stderr: warnings (-v info, -vv debug; -q errors only); ``log_file``: info (-vv debug) and progress lines."""
    level = logging.ERROR if quiet else max(logging.WARNING - 10 * verbose, logging.DEBUG)
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", stream=sys.stderr)
    for handler in root.handlers:
        if handler not in before:
            handler.setLevel(level)
            handler.addFilter(_not_progress)
    for old in [h for h in root.handlers if isinstance(h, LogFile)]:  # an earlier run in this process
        root.removeHandler(old)
        old.close()
    if log_file is not None:
        handler = LogFile(log_file)
        handler.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
        root.addHandler(handler)
        root.setLevel(min(root.getEffectiveLevel(), handler.level))


# -- the counters ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Volume:
    key: str
    size: int
    done: int = 0


@dataclass(frozen=True, slots=True)
class Counters:
    """The counters at one moment, as the views show them."""

    bytes_done: int
    bytes_total: int | None
    bytes_processed: int
    rate_bytes_per_s: float
    eta_s: float | None
    volumes_done: int
    volumes_total: int | None
    volume: str | None
    volume_bytes_done: int | None
    volume_size_bytes: int | None
    new_bytes: int | None
    stored_bytes: int | None


class Progress:
    """Receives job events; keeps the counters; draws them for a person and writes them for a program.

    Nothing here writes to stdout. ``finish`` ends a run that produced a result;
    ``close`` (called when the command ends, also after an error) ends one that did not.
    """

    def __init__(
        self,
        command: str = "",
        *,
        quiet: bool = False,
        verbose: int = 0,
        stream: TextIO | None = None,
        total_bytes: int | None = None,
        events: TextIO | None = None,
        close_events: bool = False,
        interval_s: float = EVENT_INTERVAL_S,
        live: bool | None = None,
    ) -> None:
        self.command = command
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self.interval_s = interval_s
        self._lock = threading.RLock()
        self._clock = time.monotonic
        self.started = self._clock()
        self.total: int | None = total_bytes
        self.volumes_total: int | None = None
        self.finished_bytes = 0  # volumes done (counted whole) and bytes of no volume (verify)
        self.processed = 0
        self.volumes_done = 0
        self.new_bytes: int | None = None
        self.stored_bytes: int | None = None
        self._planned: dict[str, int] = {}
        self._active: dict[str, _Volume] = {}
        self._by_thread: dict[int, str] = {}
        self.current = ""
        self._samples: deque[tuple[float, int, int]] = deque([(self.started, 0, 0)])
        self._last_event = self.started
        self._last_tick = self.started
        self._last_line = self.started
        self._warned: set[str] = set()
        self._ended = False
        want_live = (not quiet and _is_terminal(self.stream)) if live is None else live
        self._events = _Events(events, command, close=close_events) if events is not None else None
        self._live = _Live(self.stream, command) if want_live and command else None
        if self._events is not None:
            self._events.write(
                "start",
                toolkit=_version(),
                pid=os.getpid(),
                host=socket.gethostname(),
                bytes_total=self.total,
                volumes_total=None,
            )
        if command:
            log.info("%s started", command)

    @property
    def live(self) -> bool:
        return self._live is not None

    # -- events in -----------------------------------------------------------------------------------

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            if self._ended:
                return
            if kind == "bytes":
                self._bytes(int(data["n"]))
            elif kind == "volume_start":
                self._volume_start(str(data["key"]), int(data.get("size", 0)))
            elif kind == "volume":
                self._volume_end(data)
            elif kind in ("datastore", "plan"):
                self._plan(data)
            elif kind == "stats":
                self.new_bytes = int(data.get("new_bytes", 0))
                self.stored_bytes = int(data.get("stored_bytes", 0))
            elif kind == "message":
                self.warning(str(data["text"]))

    def _plan(self, data: dict[str, Any]) -> None:
        sizes = {str(k): int(v) for k, v in (data.get("sizes") or {}).items() if str(k) not in self._planned}
        self._planned.update(sizes)
        added = sum(sizes.values()) + int(data.get("bytes", 0))
        count = int(data.get("volumes", len(sizes)))
        self.total = (self.total or 0) + added
        if count or sizes:
            self.volumes_total = (self.volumes_total or 0) + count
        where = data.get("datastore")
        if self._events is not None:
            self._events.write(
                "plan",
                datastore=where,
                volumes=count,
                bytes=added,
                bytes_total=self.total,
                volumes_total=self.volumes_total,
            )
        if where is not None:
            self._say(f"datastore {where}: {count} volume(s), {human_bytes(added)}")

    def _volume_start(self, key: str, size: int) -> None:
        if key not in self._planned:
            self._planned[key] = size
            self.total = (self.total or 0) + size
            self.volumes_total = (self.volumes_total or 0) + 1
        self._active[key] = _Volume(key, size)
        self._by_thread[threading.get_ident()] = key
        self.current = key
        if self._events is not None:
            self._events.write("volume-start", volume=key, size_bytes=size)
        if self._live is not None:
            self._live.volume_start(key, size)
        if self.verbose:
            self._say(f"{'start':>10}  {key} ({human_bytes(size)})", stderr=not self.live)
        self._tick(force=True)

    def _bytes(self, n: int) -> None:
        self.processed += n
        key = self._by_thread.get(threading.get_ident())
        vol = self._active.get(key) if key is not None else None
        if vol is None and len(self._active) == 1:
            vol = next(iter(self._active.values()))
        if vol is not None:
            vol.done += n
        else:
            self.finished_bytes += n
        self._tick()

    def _volume_end(self, entry: dict[str, Any]) -> None:
        key = str(entry["key"])
        vol = self._active.pop(key, None)
        for ident in [i for i, k in self._by_thread.items() if k == key]:
            del self._by_thread[ident]
        if vol is None and key not in self._planned:  # never listed (deleted, or missing from the datastore)
            self._planned[key] = 0
            self.volumes_total = (self.volumes_total or 0) + 1
        size = vol.size if vol is not None else self._planned[key]
        self.finished_bytes += size
        self.volumes_done += 1
        status = str(entry.get("state") or entry.get("status") or "done")
        reason = entry.get("reason") or entry.get("error") or entry.get("note")
        if self._live is not None:
            self._live.volume_end(key)
        if self._events is not None:
            self._events.write(
                "volume-end",
                volume=key,
                status=status,
                reason=str(reason) if reason else None,
                size_bytes=size,
                volume_bytes_processed=vol.done if vol is not None else 0,
                bytes_done=self._done(),
                volumes_done=self.volumes_done,
            )
        self._say(f"{status:>10}  {key}" + (f"  ({reason})" if reason else ""))
        self._tick(force=True)

    def warning(self, text: str) -> None:
        with self._lock:
            if text in self._warned:
                return
            self._warned.add(text)
            if self._events is not None:
                self._events.write("warning", message=text)
            self._say(f"warning: {text}", level=logging.WARNING)

    # -- counters out --------------------------------------------------------------------------------

    def _done(self) -> int:
        done = self.finished_bytes + sum(min(v.done, v.size) for v in self._active.values())
        return done if self.total is None else min(done, self.total)

    def counters(self) -> Counters:
        with self._lock:
            now = self._clock()
            done = self._done()
            first_t, first_done, first_processed = self._samples[0]
            span = now - first_t
            rate = (self.processed - first_processed) / span if span > 0 else 0.0
            done_rate = (done - first_done) / span if span > 0 else 0.0
            eta = None
            if self.total is not None and done_rate > 0 and now - self.started >= ETA_AFTER_S:
                eta = max(0.0, (self.total - done) / done_rate)
            vol = self._active.get(self.current)
            return Counters(
                bytes_done=done,
                bytes_total=self.total,
                bytes_processed=self.processed,
                rate_bytes_per_s=rate,
                eta_s=eta,
                volumes_done=self.volumes_done,
                volumes_total=self.volumes_total,
                volume=vol.key if vol is not None else None,
                volume_bytes_done=vol.done if vol is not None else None,
                volume_size_bytes=vol.size if vol is not None else None,
                new_bytes=self.new_bytes,
                stored_bytes=self.stored_bytes,
            )

    def _tick(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_tick < min(TICK_S, self.interval_s):
            return
        self._last_tick = now
        self._samples.append((now, self._done(), self.processed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        if self._live is not None:
            self._live.update(self.counters(), self._active)
        if self._events is not None and now - self._last_event >= self.interval_s and not force:
            self._last_event = now
            s = self.counters()
            self._events.write(
                "progress",
                bytes_done=s.bytes_done,
                bytes_total=s.bytes_total,
                bytes_processed=s.bytes_processed,
                rate_bytes_per_s=round(s.rate_bytes_per_s, 1),
                eta_s=None if s.eta_s is None else round(s.eta_s, 1),
                volumes_done=s.volumes_done,
                volumes_total=s.volumes_total,
                volume=s.volume,
                volume_bytes_done=s.volume_bytes_done,
                volume_size_bytes=s.volume_size_bytes,
                new_bytes=s.new_bytes,
                stored_bytes=s.stored_bytes,
            )
        if now - self._last_line >= LINE_INTERVAL_S:
            self._last_line = now
            self._say(self.summary(), stderr=not self.live)

    def summary(self) -> str:
        """One line: how far, how fast, how long still, and for a snapshot how much was new."""
        s = self.counters()
        text = f"{human_bytes(s.bytes_done)}"
        if s.bytes_total:
            text += f" of {human_bytes(s.bytes_total)} ({min(s.bytes_done / s.bytes_total, 1.0):.0%})"
        text += f" at {human_bytes(s.rate_bytes_per_s)}/s"
        if s.eta_s is not None:
            text += f", {human_duration(s.eta_s)} left"
        if s.new_bytes is not None and s.stored_bytes is not None:
            text += f"; new data {human_bytes(s.new_bytes)}, stored as {human_bytes(s.stored_bytes)}"
        return text

    # -- views ---------------------------------------------------------------------------------------

    def _say(self, text: str, *, stderr: bool = True, level: int = logging.INFO) -> None:
        """A line for the log, and for stderr unless quiet (through the live display when there is one)."""
        log.log(level, "%s%s", f"{self.command}: " if self.command else "", text.lstrip())
        if self.quiet or not stderr:
            return
        if self._live is not None:
            self._live.line(text)
            return
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text + "\n")
            self.stream.flush()

    def finish(self, ok: bool = True, *, warnings: list[str] | tuple[str, ...] = ()) -> None:
        """The job produced its result: report any warning not yet reported, then the end."""
        for text in warnings:
            self.warning(text)
        self._end(ok, None)

    def close(self) -> None:
        """The command ended; without a ``finish``, the end says why (the exception being handled, if any)."""
        exc = sys.exc_info()[1]
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            self._end(True, None)
        elif isinstance(exc, SystemExit):
            self._end(False, {"code": "failed", "message": f"exit code {exc.code}"})
        elif isinstance(exc, Error):
            self._end(False, {"code": exc.code, "message": str(exc)})
        elif isinstance(exc, KeyboardInterrupt | click.exceptions.Abort):
            self._end(False, {"code": "interrupted", "message": "interrupted"})
        else:
            self._end(False, {"code": "unexpected", "message": f"unexpected failure ({type(exc).__name__})"})

    def _end(self, ok: bool, error: dict[str, str] | None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            s = self.counters()
            duration = self._clock() - self.started
            if self._live is not None:
                self._live.stop()
            if self._events is not None:
                self._events.write(
                    "end",
                    ok=ok,
                    error=error,
                    bytes_done=s.bytes_done,
                    bytes_total=s.bytes_total,
                    bytes_processed=s.bytes_processed,
                    volumes_done=s.volumes_done,
                    volumes_total=s.volumes_total,
                    new_bytes=s.new_bytes,
                    stored_bytes=s.stored_bytes,
                    duration_s=round(duration, 3),
                )
                self._events.close()
            if self.command:
                outcome = "done" if ok else f"failed: {error['message']}" if error else "done with problems"
                log.info(
                    "%s %s: %s in %s", self.command, outcome, human_bytes(s.bytes_processed), human_duration(duration)
                )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _version() -> str:
    from toolkit import __version__

    return __version__


# -- JSON-lines events -------------------------------------------------------------------------------------


class _Events:
    """Writes one JSON object per line; a reader that went away stops the events, not the job."""

    def __init__(self, stream: TextIO, command: str, *, close: bool) -> None:
        self.stream = stream
        self.command = command
        self._close = close
        self._seq = 0
        self._started = time.monotonic()
        self._broken = False

    def write(self, event: str, **fields: Any) -> None:
        if self._broken:
            return
        self._seq += 1
        now = time.monotonic()
        record = {
            "v": EVENTS_VERSION,
            "seq": self._seq,
            "event": event,
            "command": self.command,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "elapsed_s": round(now - self._started, 3),
            **fields,
        }
        try:
            self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.stream.flush()
        except (OSError, ValueError) as exc:
            self._broken = True
            log.warning("progress events stopped: %s", getattr(exc, "strerror", None) or exc)

    def close(self) -> None:
        if self._close:
            with contextlib.suppress(OSError):
                self.stream.close()


def open_events(target: str) -> tuple[TextIO, bool]:
    """The stream for ``--progress-json``: ``-`` is stderr; a path is appended to. Returns (stream, close it)."""
    if target == "-":
        return sys.stderr, False
    path = Path(target).expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise ProgressFileUnwritable(path=path, detail=exc.strerror or str(exc)) from None
    return os.fdopen(fd, "w", encoding="utf-8"), True


# -- the live display ----------------------------------------------------------------------------------------


class _Live:
    """Bars on a terminal: the whole job, and each volume in progress."""

    def __init__(self, stream: TextIO, command: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as Bars

        self.console = Console(file=stream, highlight=False, markup=False, emoji=False)
        self.bars = Bars(
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[amount]}", markup=False),
            TextColumn("{task.fields[info]}", markup=False),
            console=self.console,
            transient=True,
            redirect_stdout=False,
            refresh_per_second=4,
        )
        self.command = command
        self.total = self.bars.add_task(command, total=None, amount="", info="")
        self.tasks: dict[str, Any] = {}
        self.bars.start()

    def line(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text))

    def volume_start(self, key: str, size: int) -> None:
        label = key if len(key) <= LABEL_CHARS else "…" + key[-(LABEL_CHARS - 1) :]
        amount = f"0 B of {human_bytes(size)}"
        self.tasks[key] = self.bars.add_task(f"  {label}", total=size or None, amount=amount, info="")

    def volume_end(self, key: str) -> None:
        task = self.tasks.pop(key, None)
        if task is not None:
            self.bars.remove_task(task)

    def update(self, s: Counters, active: dict[str, _Volume]) -> None:
        amount = human_bytes(s.bytes_done) + (f" of {human_bytes(s.bytes_total)}" if s.bytes_total else "")
        info = [f"{human_bytes(s.rate_bytes_per_s)}/s"]
        if s.eta_s is not None:
            info.append(f"{human_duration(s.eta_s)} left")
        if s.new_bytes is not None and s.stored_bytes is not None:
            info.append(f"new {human_bytes(s.new_bytes)} → {human_bytes(s.stored_bytes)} stored")
        self.bars.update(
            self.total, total=s.bytes_total or None, completed=s.bytes_done, amount=amount, info=", ".join(info)
        )
        for key, vol in active.items():
            task = self.tasks.get(key)
            if task is not None:
                done = min(vol.done, vol.size) if vol.size else vol.done
                self.bars.update(task, completed=done, amount=f"{human_bytes(done)} of {human_bytes(vol.size)}")

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # a terminal that went away must not turn a result into an error
            self.bars.stop()
