"""Background jobs: imports and replication run after a short delay, so clients poll
``GET /cv_api/jobs/pending`` until it reaches 0, as they do against a real manager."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed"]
JOB_HISTORY_MAX: Final = 500  # finished jobs kept for inspection; older ones are dropped


@dataclass(slots=True)
class Job:
    id: int
    name: str
    ready_at: float
    action: Callable[[], str]
    state: JobState = "queued"
    result: str = ""
    finished_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "state": self.state, "result": self.result}


@dataclass
class JobQueue:
    """A single worker thread running jobs once their delay has passed, oldest first."""

    delay_s: float
    _jobs: list[Job] = field(default_factory=list)
    _done: list[Job] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _next_id: int = 1
    _stopping: bool = False
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="avm-sim-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def submit(self, name: str, action: Callable[[], str], *, delay_s: float | None = None) -> Job:
        with self._cond:
            wait = self.delay_s if delay_s is None else delay_s
            job = Job(self._next_id, name, time.monotonic() + wait, action)
            self._next_id += 1
            self._jobs.append(job)
            self._cond.notify_all()
            return job

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs)

    def history(self) -> list[Job]:
        with self._cond:
            return [*self._done, *self._jobs]

    def release_all(self) -> None:
        """Make every queued job due now (the worker still runs them)."""
        with self._cond:
            for job in self._jobs:
                job.ready_at = 0.0
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._jobs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            job = self._next_due()
            if job is None:
                return
            self._execute(job)

    def _next_due(self) -> Job | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._jobs:
                    job = self._jobs[0]
                    wait = job.ready_at - time.monotonic()
                    if wait <= 0:
                        job.state = "running"
                        return job
                    self._cond.wait(wait)
                else:
                    self._cond.wait()

    def _execute(self, job: Job) -> None:
        try:
            job.result = job.action()
            job.state = "done"
        except Exception as exc:  # a failing job is a result, like on the real manager
            log.warning("job %s (%s) failed: %s", job.id, job.name, exc, exc_info=True)
            job.result = str(exc)
            job.state = "failed"
        with self._cond:
            job.finished_at = time.monotonic()
            self._jobs.remove(job)
            self._done.append(job)
            del self._done[:-JOB_HISTORY_MAX]
            self._cond.notify_all()
