"""Atomic partitions: a crash at any moment leaves the old complete output or the new one."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from gen4gen.staging import recover, staged_folder


def _write(folder, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def _read(folder) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_a_staged_folder_replaces_the_old_output_in_one_step(tmp_path):
    final = tmp_path / "layouts" / "cat+dog"
    with staged_folder(final) as staging:
        _write(staging, {"000.json": "old", "manifest.json": "m1"})
    with staged_folder(final) as staging:
        assert _read(final) == {"000.json": "old", "manifest.json": "m1"}  # readers see the old one meanwhile
        _write(staging, {"001.json": "new", "manifest.json": "m2"})
    assert _read(final) == {"001.json": "new", "manifest.json": "m2"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["cat+dog"]


def test_an_error_while_staging_keeps_the_previous_output(tmp_path):
    final = tmp_path / "p"
    with staged_folder(final) as staging:
        _write(staging, {"a": "1"})
    with pytest.raises(RuntimeError):
        with staged_folder(final) as staging:
            _write(staging, {"a": "2"})
            raise RuntimeError("backend failed")
    assert _read(final) == {"a": "1"}
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def _crash(tmp_path, point: str) -> None:
    """Run a writer in a child process that is SIGKILLed at ``point``."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from gen4gen.staging import staged_folder
        final = Path({str(tmp_path / 'p')!r})
        with staged_folder(final) as staging:
            (staging / "a").write_text("2")
            (staging / "b").write_text("2")
    """)
    env = {**os.environ, "GEN4GEN_CRASH_AT": point}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=os.getcwd())
    assert result.returncode == -9


def test_a_writer_killed_after_staging_is_rolled_forward_by_the_next_run(tmp_path):
    final = tmp_path / "p"
    with staged_folder(final) as staging:
        _write(staging, {"a": "1"})
    _crash(tmp_path, "partition-staged")
    assert _read(final) == {"a": "1"}  # still the old complete output
    notes = recover(final)
    assert _read(final) == {"a": "2", "b": "2"} and "installed" in notes[0]
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_an_incomplete_staging_folder_is_removed_and_the_old_output_kept(tmp_path):
    final = tmp_path / "p"
    with staged_folder(final) as staging:
        _write(staging, {"a": "1"})
    half = tmp_path / ".p.staging-deadbeef0000"
    half.mkdir()
    _write(half, {"a": "half"})
    notes = recover(final)
    assert _read(final) == {"a": "1"} and "incomplete" in notes[0]
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_a_crash_between_the_two_renames_leaves_a_complete_output(tmp_path):
    """Old moved aside, new not yet in place: recovery installs the new one."""
    final = tmp_path / "p"
    ready = tmp_path / ".p.ready-0000aaaa0000"
    ready.mkdir()
    _write(ready, {"a": "new"})
    old = tmp_path / ".p.old-0000aaaa0000"
    old.mkdir()
    _write(old, {"a": "old"})
    recover(final)
    assert _read(final) == {"a": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["p"]
