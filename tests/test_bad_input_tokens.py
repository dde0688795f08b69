"""Bad and unusual user input, part 3: stable tokens and proposals, atomic writes."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from gen4gen.concepts import build_registry, propose_compositions, split_composition
from gen4gen.config import PipelineConfig
from gen4gen.io import atomic_write_bytes

from .conftest import make_concepts
from .test_bad_input import BLUE, GREEN, RED


def _config(data: Path, **proposal) -> PipelineConfig:
    return PipelineConfig(data_dir=str(data), proposal=proposal)


def test_adding_a_concept_keeps_existing_token_indices(tmp_path):
    data = tmp_path / "data"
    make_concepts(data / "concepts", {"cat": [("ellipse", RED)], "mug": [("rect", BLUE)], "vase": [("rect", GREEN)]})
    config = _config(data, max_compositions=3)
    first = build_registry(config, {})
    tokens = {c["key"]: c["token_index"] for c in first["concepts"]}
    assert sorted(tokens.values()) == [1, 2, 3]
    comp_tokens = {c["key"]: c["token_index"] for c in first["compositions"]}
    # A new concept whose name sorts first must not shift anyone's index.
    make_concepts(data / "concepts", {"aardvark": [("triangle", GREEN)]})
    second = build_registry(_config(data, max_compositions=8), first)
    new_tokens = {c["key"]: c["token_index"] for c in second["concepts"]}
    assert {k: new_tokens[k] for k in tokens} == tokens
    assert new_tokens["aardvark"] == 4
    for comp in second["compositions"]:
        if comp["key"] in comp_tokens:
            assert comp["token_index"] == comp_tokens[comp["key"]]
    assert len({c["token_index"] for c in second["compositions"]}) == len(second["compositions"])
    # A removed concept's token is retired, never handed to the next new one.
    for photo in (data / "concepts" / "mug").iterdir():
        photo.unlink()
    (data / "concepts" / "mug").rmdir()
    third = build_registry(_config(data, max_compositions=8), second)
    assert third["retired_concept_tokens"] == {"mug": tokens["mug"]}
    make_concepts(data / "concepts", {"zebra": [("rect", RED)]})
    fourth = build_registry(_config(data, max_compositions=8), third)
    indices = {c["key"]: c["token_index"] for c in fourth["concepts"]}
    assert indices["zebra"] == 5 and indices["cat"] == tokens["cat"] and indices["aardvark"] == 4


def test_propose_compositions_is_deterministic_and_covers_every_concept():
    keys = [f"concept_{i}" for i in range(9)]
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    first = propose_compositions(keys, [2, 3], budget=len(keys))
    assert first == propose_compositions(shuffled, [2, 3], budget=len(keys))
    assert first == propose_compositions(keys + keys[:2], [3, 2], budget=len(keys))
    assert len(first) == len(keys) == len(set(first))
    assert {k for comp in first for k in split_composition(comp)} == set(keys)
    assert {len(split_composition(c)) for c in first} == {2, 3}
    for budget in (1, 3, 5, 20):
        chosen = propose_compositions(keys, [2, 3], budget)
        assert len(chosen) == budget and len(set(chosen)) == budget
        assert all(len(split_composition(c)) in (2, 3) for c in chosen)
    # Fewer possible compositions than the budget: all of them, once.
    assert propose_compositions(["a", "b", "c"], [2, 3], 100) == ["a+b", "a+b+c", "a+c", "b+c"]
    assert propose_compositions(["a"], [2, 3], 5) == []


def test_explicit_compositions_are_honoured_and_unknown_concepts_dropped():
    keys = ["cat", "mug", "vase"]
    chosen = propose_compositions(keys, [2, 3], 1, explicit=["mug+cat", "vase+unicorn", "cat+mug+vase"])
    assert chosen == ["cat+mug", "cat+mug+vase"]


def test_explicit_compositions_through_the_registry(tmp_path):
    data = tmp_path / "data"
    make_concepts(data / "concepts", {"cat": [("ellipse", RED)], "mug": [("rect", BLUE)]})
    registry = build_registry(_config(data, explicit=["mug+cat", "cat+ghost"]), {})
    assert [c["key"] for c in registry["compositions"]] == ["cat+mug"]
    assert registry["compositions"][0]["concepts"] == ["cat", "mug"]


# ---------------------------------------------------------------- 4. atomic writes
@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch, error):
    target = tmp_path / "out" / "manifest.json"
    atomic_write_bytes(target, b"old content")

    def failing_replace(src, dst):
        raise error

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(type(error)):
        atomic_write_bytes(target, b"new content that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]


def test_failed_first_atomic_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "new.png"

    def failing_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"x" * 1000)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
