"""The partition lock of a cluster: an exclusive create owned by a run, no flock, no clocks."""
from __future__ import annotations

import json
import threading

import pytest

from gen4gen.locking import LockTimeout, run_lock


def test_a_running_holder_keeps_the_lock_until_it_lets_go(tmp_path):
    path = tmp_path / "p.run-lock"
    with run_lock(path, "run-a", lambda run: True, poll_s=0.01):
        assert json.loads(path.read_text())["run_id"] == "run-a"
        with pytest.raises(LockTimeout, match="held by run run-a"):
            with run_lock(path, "run-b", lambda run: True, poll_s=0.01, timeout_s=0.1):
                pass
    with run_lock(path, "run-b", lambda run: True, poll_s=0.01, timeout_s=0.1):
        assert json.loads(path.read_text())["run_id"] == "run-b"
    assert not path.exists()


def test_the_lock_of_a_run_that_ended_or_of_this_run_is_taken_over(tmp_path):
    path = tmp_path / "p.run-lock"
    path.write_text(json.dumps({"run_id": "dead-run"}))  # its run was killed holding it
    asked = []
    with run_lock(path, "run-b", lambda run: asked.append(run) or False, poll_s=0.01, timeout_s=1):
        assert json.loads(path.read_text())["run_id"] == "run-b"
    assert asked == ["dead-run"]
    path.write_text(json.dumps({"run_id": "run-c"}))  # an earlier attempt of the same run
    with run_lock(path, "run-c", lambda run: True, poll_s=0.01, timeout_s=1):
        assert json.loads(path.read_text())["run_id"] == "run-c"
    assert not list(tmp_path.glob("*.stale-*"))


def test_one_holder_at_a_time_under_contention(tmp_path):
    path, counter = tmp_path / "p.run-lock", tmp_path / "counter"
    counter.write_text("0")
    inside, overlaps = [], []

    def worker(name: str) -> None:
        for _ in range(25):
            with run_lock(path, name, lambda run: True, poll_s=0.001):
                inside.append(name)
                if len(inside) > 1:
                    overlaps.append(list(inside))
                counter.write_text(str(int(counter.read_text()) + 1))
                inside.remove(name)

    threads = [threading.Thread(target=worker, args=(f"run-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [] and counter.read_text() == "100"
