"""Runs that died do not block: a heartbeat lease per command-line run, kept in the instance.

Dagster's run monitoring watches runs launched by the daemon, not runs executed in-process by
``gen4gen materialize``. Each such run carries a lease id (a run tag) and refreshes the lease's
time in the instance's key-value storage while it runs; a run still marked STARTED whose lease
has expired was killed (``kill -9``, a lost machine). It is marked failed and its concurrency
pool slots are freed. The lease lives in the instance, so it works across hosts that share one
(a PID check would not).
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid

LEASE_TAG = "gen4gen/lease"
LEASE_PREFIX = "gen4gen/lease/"
# A run whose lease was not refreshed for this long is dead.
LEASE_S = 30.0
HEARTBEAT_S = 5.0
_HOST = socket.gethostname()


def _now() -> float:
    return time.time()


class RunHeartbeat:
    """Refreshes a lease while a run executes; Ctrl-C / SIGTERM end the run as a failure."""

    def __init__(self, instance, interval_s: float = HEARTBEAT_S):
        self.instance = instance
        self.lease = uuid.uuid4().hex
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="gen4gen-heartbeat")
        self._previous_term = None

    @property
    def tags(self) -> dict:
        return {LEASE_TAG: self.lease}

    def _write(self) -> None:
        self.instance.run_storage.set_cursor_values({LEASE_PREFIX + self.lease: f"{_now()!r}|{_HOST}|{os.getpid()}"})

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._write()
            except Exception:  # a busy database: the next beat tries again
                pass

    def __enter__(self) -> "RunHeartbeat":
        self._write()
        self._thread.start()
        if threading.current_thread() is threading.main_thread():
            # SIGTERM behaves like Ctrl-C: Dagster ends the run as failed and releases its slots.
            self._previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 1)
        if self._previous_term is not None:
            signal.signal(signal.SIGTERM, self._previous_term)
        try:
            self.instance.run_storage.set_cursor_values({LEASE_PREFIX + self.lease: "done"})
        except Exception:
            pass
        _release_runs_of_lease(self.instance, self.lease)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _release_runs_of_lease(instance, lease: str) -> None:
    """After an interrupted run: mark it failed and free its slots (a clean stop)."""
    from dagster import DagsterRunStatus, RunsFilter

    for run in instance.get_runs(filters=RunsFilter(tags={LEASE_TAG: lease},
                                                    statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])):
        instance.report_run_failed(run, "the gen4gen command running it was interrupted")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


def clean_dead_runs(instance, log=print, lease_s: float = LEASE_S) -> list[str]:
    """Mark failed every command-line run whose lease expired, free its pool slots; returns notes."""
    from dagster import DagsterRunStatus, RunsFilter

    runs = [r for r in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED,
                                                                       DagsterRunStatus.STARTING]))
            if LEASE_TAG in r.tags]
    if not runs:
        return []
    keys = {LEASE_PREFIX + r.tags[LEASE_TAG] for r in runs}
    beats = instance.run_storage.get_cursor_values(keys)
    notes = []
    for run in runs:
        if _alive(beats.get(LEASE_PREFIX + run.tags[LEASE_TAG]), lease_s):
            continue
        note = (f"run {run.run_id} ({run.job_name}{_partition(run)}) stopped without ending (its process was killed "
                "or its machine lost): marked failed and its pool slots freed")
        instance.report_run_failed(run, note)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log(f"  clean {note}")
        notes.append(note)
    return notes


def _alive(beat: str | None, lease_s: float) -> bool:
    """A lease is alive while refreshed; on this host, a holder process that is gone is dead at once."""
    if beat in (None, "done"):
        return False
    when, host, pid = (beat.split("|") + ["", ""])[:3]
    if host == _HOST and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return _now() - float(when) < lease_s


def _partition(run) -> str:
    key = run.tags.get("dagster/partition")
    return f"[{key}]" if key else ""


def runs_in_progress(instance, job_name: str, partition_key: str) -> list[str]:
    """Live runs of this job and partition (queued or started, from the CLI, the UI or a sensor)."""
    from dagster import DagsterRunStatus, RunsFilter

    runs = instance.get_runs(filters=RunsFilter(
        job_name=job_name, tags={"dagster/partition": partition_key},
        statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                  DagsterRunStatus.STARTED]))
    return [r.run_id for r in runs]


def new_lease() -> str:
    return uuid.uuid4().hex
