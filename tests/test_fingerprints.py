"""Fingerprints: which configuration keys, backends and code versions make each stage stale."""
from __future__ import annotations

import pytest

from gen4gen.config import PipelineConfig
from gen4gen.fingerprints import (STAGES, code_versions, desired_state, describe_changes, fingerprint_record,
                                  source_digest, stage_config)

REGISTRY = {
    "concepts": [{"key": "cat", "name": "cat", "class_name": "cat", "token_index": 1, "data_version": "v-cat"},
                 {"key": "dog", "name": "dog", "class_name": "dog", "token_index": 2, "data_version": "v-dog"}],
    "compositions": [{"key": "cat+dog", "concepts": ["cat", "dog"], "token_index": 1}],
}
ORDER = list(STAGES)


def _digests(config, tmp_path) -> dict[str, str]:
    state = desired_state(config, REGISTRY)
    return {stage: state.get(stage, {"concepts": "cat", "compositions": "cat+dog"}.get(spec.partitioned_by)).digest
            for stage, spec in STAGES.items()}


def _config(tmp_path, **values) -> PipelineConfig:
    return PipelineConfig.model_validate({"data_dir": str(tmp_path / "data"), **values})


def _set(values: dict, dotted: str, value) -> dict:
    node = values
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return values


def _changed_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return round(value * 0.5 + 0.01, 4)
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return [_changed_value(v) for v in value]
    return None


def _valid_change(key: str, value, data_dir: str):
    """A configuration that differs from the defaults in ``key`` only, and validates."""
    import typing

    from pydantic import BaseModel, ValidationError

    model, annotation = PipelineConfig, None
    for part in key.split("."):
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    options = [a for a in typing.get_args(annotation) if isinstance(a, str) and a != value] \
        if typing.get_origin(annotation) is typing.Literal else []
    candidates = options[:1] + [_changed_value(value)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        candidates += [value - 1, value * 2, round(value * 0.9, 4)]
    for candidate in candidates:
        if candidate is None or candidate == value:
            continue
        try:
            return PipelineConfig.model_validate(_set({"data_dir": data_dir}, key, candidate))
        except ValidationError:
            continue
    return None


# (stage, key) for every value a stage's fingerprint holds, with a value it can take instead.
CASES = [(stage, key) for stage in STAGES for key, value in stage_config(stage, PipelineConfig()).items()
         if value is not None and not isinstance(value, (dict, list)) or isinstance(value, list) and value
         and all(isinstance(v, (int, float)) for v in value)]


@pytest.mark.parametrize("stage,key", CASES, ids=[f"{s}:{k}" for s, k in CASES])
def test_a_key_in_a_stage_fingerprint_makes_that_stage_and_its_descendants_stale_only(stage, key, tmp_path):
    base = _config(tmp_path)
    changed = _valid_change(key, stage_config(stage, base)[key], str(tmp_path / "data"))
    assert changed is not None, f"no other valid value found for {key}"
    before, after = _digests(base, tmp_path), _digests(changed, tmp_path)
    first = min(ORDER.index(s) for s in STAGES if key in stage_config(s, base))
    for name in ORDER[:first]:
        assert before[name] == after[name], f"{key} must not make {name} stale"
    assert before[stage] != after[stage]
    for name in ORDER[ORDER.index(stage):]:
        assert before[name] != after[name], f"{name} is downstream of {stage} and must follow"


def test_report_settings_rebuild_only_the_report(tmp_path):
    before = _digests(_config(tmp_path), tmp_path)
    after = _digests(_config(tmp_path, report={"contact_sheet_columns": 3}), tmp_path)
    assert [s for s in ORDER if before[s] != after[s]] == ["evaluation_report"]


@pytest.mark.parametrize("key,value", [("recolour.batch_size", 1), ("segmentation.threads", 1),
                                       ("recolour.compile", True), ("layout.llm.timeout_s", 5.0),
                                       ("ray.enabled", True), ("ray.repaint_workers", 3)])
def test_settings_that_change_pixels_only_within_tolerance_are_not_in_the_fingerprint(key, value, tmp_path):
    base = _config(tmp_path)
    changed = PipelineConfig.model_validate(_set({"data_dir": str(tmp_path / "data")}, key, value))
    assert _digests(base, tmp_path) == _digests(changed, tmp_path)


def test_switching_a_backend_names_it_and_spares_the_stages_before(tmp_path):
    base = _config(tmp_path)
    poisson = _config(tmp_path, recolour={"harmonisation": "poisson"})
    before, after = _digests(base, tmp_path), _digests(poisson, tmp_path)
    assert [s for s in ORDER if before[s] == after[s]] == ["segmented_foregrounds", "layouts", "composed_images"]
    recorded = fingerprint_record(desired_state(base, REGISTRY).get("recoloured_images", "cat+dog"), {}, None)
    reasons = describe_changes(recorded, desired_state(poisson, REGISTRY).get("recoloured_images", "cat+dog"))
    assert "config recolour.harmonisation lab → poisson" in reasons


def test_a_changed_concept_photo_reaches_its_compositions_only(tmp_path):
    config = _config(tmp_path)
    extra = {"key": "owl", "name": "owl", "class_name": "owl", "token_index": 3, "data_version": "v-owl"}
    registry = {**REGISTRY, "concepts": REGISTRY["concepts"] + [extra],
                "compositions": REGISTRY["compositions"] + [{"key": "dog+owl", "token_index": 2}]}
    before = desired_state(config, registry)
    registry["concepts"][0] = {**registry["concepts"][0], "data_version": "v-cat-2"}
    after = desired_state(config, registry)
    assert before.get("layouts", "cat+dog").digest != after.get("layouts", "cat+dog").digest
    assert before.get("layouts", "dog+owl").digest == after.get("layouts", "dog+owl").digest
    recorded = fingerprint_record(before.get("layouts", "cat+dog"), {}, None)
    assert describe_changes(recorded, after.get("layouts", "cat+dog")) == ["segmented_foregrounds[cat]"]


def test_every_stage_code_version_matches_its_source():
    """Fails when a stage's code changed and its code version did not: run
    `python -m gen4gen.fingerprints --update-code-versions` and commit code_versions.json."""
    recorded = code_versions()
    stale = [stage for stage in STAGES if recorded[stage]["source_digest"] != source_digest(stage)]
    assert not stale, f"source changed without a code version bump: {stale}"


def test_an_older_fingerprint_schema_is_rebuilt_with_a_message(tmp_path):
    desired = desired_state(_config(tmp_path), REGISTRY).get("layouts", "cat+dog")
    old = {**fingerprint_record(desired, {}, None), "schema": 1}
    assert "older version" in describe_changes(old, desired)[0]
