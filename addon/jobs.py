"""Long work off Blender's main thread: a worker thread, a message queue, and polling from the main thread.

The worker never touches bpy. The main thread (a modal operator's timer, or a loop in background mode and in
tests) calls `Job.poll()`, which drains the queue and says where the job is. Only one job runs at a time, so the
panels can show its progress (`active_job()`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"

_active: Job | None = None


class Job:
    """Runs `work(progress, cancel_event)` on a daemon thread.

    `progress(stage: str, fraction: float)` may be called from the worker; `cancel_event` is a threading.Event
    the work checks between steps. An exception raised after a cancel request counts as a cancel (the work
    stops by raising), any other exception as a failure.
    """

    def __init__(self, work: Callable, name: str):
        self.name = name
        self.stage, self.fraction = "starting", 0.0
        self.state = RUNNING
        self.result = None
        self.error: BaseException | None = None
        self.cancel_event = threading.Event()
        self._work = work
        self._messages: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"invrender-{name}", daemon=True)

    def _run(self) -> None:
        try:
            result = self._work(self._report, self.cancel_event)
        except BaseException as error:  # handed to the main thread, which reports it
            self._messages.put((CANCELLED if self.cancel_event.is_set() else FAILED, error))
        else:
            self._messages.put((FINISHED, result))

    def _report(self, stage: str, fraction: float) -> None:
        self._messages.put((RUNNING, (stage, float(fraction))))

    def poll(self) -> str:
        """Apply every message the worker sent so far; returns the state (RUNNING until the worker ended)."""
        while True:
            try:
                kind, payload = self._messages.get_nowait()
            except queue.Empty:
                return self.state
            if kind == RUNNING:
                self.stage, self.fraction = payload
            elif kind == FINISHED:
                self.state, self.result, self.fraction = FINISHED, payload, 1.0
            else:
                self.state, self.error = kind, payload

    def wait(self, timeout: float | None = None) -> str:
        """Block until the worker ends (or `timeout` seconds), then poll."""
        self._thread.join(timeout)
        return self.poll()

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def status_text(self) -> str:
        if self.cancel_event.is_set() and self.state == RUNNING:
            return f"{self.name}: cancelling…"
        return f"{self.name}: {self.stage} ({self.fraction:.0%}), Esc to cancel"


def start(work: Callable, name: str) -> Job:
    """Start `work` on a worker thread as the active job; RuntimeError if one is still running."""
    global _active
    if _active is not None and _active.state == RUNNING:
        raise RuntimeError(f"{_active.name} is still running: wait for it or press Esc to cancel it")
    job = Job(work, name)
    _active = job
    job._thread.start()
    return job


def active_job() -> Job | None:
    """The job started last while it still runs or has results not yet collected; None otherwise."""
    return _active


def release(job: Job) -> None:
    """Forget `job` once its results are collected, so another job can start and the panel stops showing it."""
    global _active
    if _active is job:
        _active = None
