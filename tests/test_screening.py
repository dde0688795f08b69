"""Screening of MyCanvas (thresholds, top fraction, detection, review overrides) and the metrics report.

One small project is built once for the module (default configuration: no CLIP backend); each
test then re-exports it with its own screening configuration and deterministic fake models, so
the expected decisions follow from the scores the export records.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance

from gen4gen.concepts import load_registry
from gen4gen.config import load_config
from gen4gen.evaluation import run_evaluation
from gen4gen.metrics import Detection
from gen4gen.report import write_report
from gen4gen.screening import ScreeningConfigError, ScreeningModels, top_fraction_cutoff
from gen4gen.stages import export_mycanvas
from gen4gen_assets.definitions import build_definitions
from gen4gen_assets.runner import materialize_all

from .conftest import create_small_project

# A cosine similarity is never below -1: thresholds that screen nothing out.
PERMISSIVE = {"caption_score": {"min": -1.0}, "concept_similarity": {"min": -1.0}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Three synthetic concepts built through Dagster with the default configuration (no CLIP backend)."""
    root = tmp_path_factory.mktemp("screening")
    data, config_file = create_small_project(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("GEN4GEN_CONFIG", raising=False)
        patch.delenv("GEN4GEN_DATA_DIR", raising=False)
        summary = materialize_all(build_definitions(config_file=str(config_file)), DagsterInstance.ephemeral(),
                                  log=lambda *_: None)
    assert not summary.failed, summary.failed
    return root, data, config_file


def _unit(seed_bytes: bytes, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed_bytes).digest()[:8], "big"))
    vector = rng.normal(size=dim)
    return vector / np.linalg.norm(vector)


class HashClip:
    """Deterministic pseudo-random embeddings from the pixels / the text: scores vary, runs repeat."""

    def embed_images(self, images):
        return np.array([_unit(image.convert("RGB").tobytes() + repr(image.size).encode()) for image in images])

    def embed_texts(self, texts):
        return np.array([_unit(text.encode()) for text in texts])

    def identity(self):
        return {"backend": "fake"}


class ClassDetector:
    """Finds every class except ``blind_to``, with one box covering the whole image."""

    def __init__(self, blind_to=()):
        self.blind_to = set(blind_to)

    def detect(self, images, class_names):
        return [{c: [] if c in self.blind_to else [Detection((0, 0, image.width, image.height), 0.9)] for c in names}
                for image, names in zip(images, class_names)]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _export(project, models=None, **overrides):
    _, data, config_file = project
    config = load_config(config_file, **overrides)
    result = export_mycanvas(load_registry(config.paths.registry), config, models=models)
    return config, result, _rows(data / "mycanvas/metadata.jsonl"), _rows(data / "mycanvas/rejected.jsonl")


def _geometric(rejected):
    return [r for r in rejected if set(r["reason_codes"]) & {"occluded", "truncated", "too_small", "degenerate_mask"}]


CLIP_ON = {"clip": {"backend": "open_clip"}}


def test_no_backend_exports_geometric_checks_only_and_reports_what_was_not_computed(project):
    _, data, _ = project
    shutil.rmtree(data / "mycanvas_review", ignore_errors=True)
    config, result, accepted, rejected = _export(project)
    assert accepted and len(accepted) + len(rejected) == 12
    assert all("screening" not in r for r in accepted + rejected)
    assert all(set(r["reason_codes"]) <= {"occluded", "truncated", "too_small", "degenerate_mask"} for r in rejected)
    assert not (data / "mycanvas_review").exists()
    evaluation = run_evaluation(config, load_registry(config.paths.registry), config.paths.mycanvas)
    stats = write_report(config.paths.mycanvas, config.paths.reports, config.report, evaluation)
    notes = " ".join(stats["not_computed"])
    for expected in ('CP-CLIP, TI-CLIP, CLIP-T and CLIP-I: not computed because no CLIP backend is configured '
                     '(clip.backend = "none")', 'DINO image similarity: not computed', 'dino.backend = "none"',
                     "evaluation.generated_dir is not set"):
        assert expected in notes
    report = json.loads((data / "reports/report.json").read_text())
    assert report["evaluation"]["sets"] == {} and report["not_computed"] == stats["not_computed"]
    markdown = (data / "reports/report.md").read_text()
    assert "## Not computed" in markdown and "## Metrics" not in markdown
    assert 'clip.backend = &quot;none&quot;' in (data / "reports/report.html").read_text()
    assert not (data / "reports/metrics.png").exists()


def test_absolute_caption_threshold(project):
    _, _, accepted, rejected = _export(project, ScreeningModels(HashClip()), screening=PERMISSIVE, **CLIP_ON)
    scores = sorted(r["screening"]["caption_score"] for r in accepted)
    assert len(set(scores)) == len(scores) >= 4 and not [r for r in rejected if r not in _geometric(rejected)]
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # between two (rounded) scores
    _, _, accepted2, rejected2 = _export(project, ScreeningModels(HashClip()), **CLIP_ON,
                                         screening={"caption_score": {"min": threshold},
                                                    "concept_similarity": {"min": -1.0}})
    assert all(r["screening"]["caption_score"] >= threshold for r in accepted2)
    screened = [r for r in rejected2 if "low_clip_score" in r["reason_codes"]]
    assert len(screened) == sum(s < threshold for s in scores) == len(accepted) - len(accepted2)
    for row in screened:
        assert row["screening"]["caption_score"] < threshold
        assert any("caption_score.min" in reason for reason in row["reasons"])
    # The rows keep the same shape, so the imagefolder schema holds.
    assert {tuple(sorted(r["screening"])) for r in accepted2 + rejected2} == {tuple(sorted(accepted2[0]["screening"]))}


def test_top_fraction_keeps_the_best_scoring_images(project):
    _, data, _ = project
    _, _, before, _ = _export(project, ScreeningModels(HashClip()), screening=PERMISSIVE, **CLIP_ON)
    config, _, accepted, rejected = _export(project, ScreeningModels(HashClip()), **CLIP_ON, screening={
        "caption_score": {"top_fraction": 0.3}, "concept_similarity": {"min": -1.0}})
    n = len(before)
    assert len(accepted) == math.ceil(0.3 * n)
    kept = [r["screening"]["caption_score"] for r in accepted]
    dropped = [r["screening"]["caption_score"] for r in rejected if "low_clip_score" in r["reason_codes"]]
    assert len(dropped) == n - len(accepted) and min(kept) > max(dropped)
    summary = json.loads((data / "mycanvas_review/summary.json").read_text())
    assert summary["thresholds"]["caption_score"]["top_fraction_cutoff"] == pytest.approx(min(kept), abs=1e-5)
    assert summary["screened_out"] == len(dropped)
    assert top_fraction_cutoff([0.1, 0.5, 0.3, 0.3], 0.5) == 0.3  # ties at the cut are kept
    assert top_fraction_cutoff([0.4, 0.2, 0.9], 0.3) == 0.9 and top_fraction_cutoff([], 0.5) is None


def test_concept_similarity_threshold(project):
    _, _, everything, _ = _export(project, ScreeningModels(HashClip()), screening=PERMISSIVE, **CLIP_ON)
    lowest = sorted(min(r["screening"]["concept_similarity"]) for r in everything)
    threshold = (lowest[len(lowest) // 2 - 1] + lowest[len(lowest) // 2]) / 2
    _, _, accepted, rejected = _export(project, ScreeningModels(HashClip()), **CLIP_ON, screening={
        "caption_score": {"min": -1.0}, "concept_similarity": {"min": threshold}})
    assert all(min(r["screening"]["concept_similarity"]) >= threshold for r in accepted)
    screened = [r for r in rejected if "low_concept_similarity" in r["reason_codes"]]
    assert len(screened) == sum(v < threshold for v in lowest)
    for row in screened:
        sims = row["screening"]["concept_similarity"]
        assert len(sims) == len(row["concepts"])
        low = [c["concept"] for c, s in zip(row["concepts"], sims) if s < threshold]
        assert {reason.split(":")[0] for reason in row["reasons"] if "crop similarity" in reason} == set(low)


def test_detector_must_find_every_concept(project):
    models = ScreeningModels(None, ClassDetector(blind_to={"green cone"}))
    _, _, accepted, rejected = _export(project, models, detector={"backend": "owlvit"})
    assert accepted and all("green_cone" not in r["composition"] for r in accepted)
    for row in rejected:
        if "green_cone" in row["composition"] and row not in _geometric(rejected):
            assert row["reason_codes"] == ["not_detected"]
            assert row["screening"]["caption_score"] is None  # no CLIP backend: not scored
            assert row["screening"]["detected"] == [c["concept"] != "green_cone" for c in row["concepts"]]
    # With a minimum overlap, a whole-image box no longer confirms a small object.
    _, _, accepted, rejected = _export(project, ScreeningModels(None, ClassDetector()), detector={"backend": "owlvit"},
                                       screening={"detection_min_iou": 0.9})
    assert not accepted and all("not_detected" in r["reason_codes"] for r in rejected if r not in _geometric(rejected))


def test_review_overrides_have_the_last_word(project):
    root, data, _ = project
    _, _, accepted, rejected = _export(project, ScreeningModels(HashClip()), **CLIP_ON, screening={
        "caption_score": {"top_fraction": 0.5}, "concept_similarity": {"min": -1.0}})
    screened_out = next(r for r in rejected if "low_clip_score" in r["reason_codes"])
    kept = accepted[0]
    geometric = _geometric(rejected)
    overrides = root / "review.csv"
    lines = ["image_id,decision,note", f"{screened_out['image_id']},accept,looks fine to me",
             f"{kept['image_id']},reject,the cone is floating", "no_such/000,reject", f"{kept['image_id']},maybe"]
    if geometric:
        lines.append(f"{geometric[0]['image_id']},accept")
    overrides.write_text("\n".join(lines) + "\n")
    _, result, accepted2, rejected2 = _export(project, ScreeningModels(HashClip()), **CLIP_ON, screening={
        "caption_score": {"top_fraction": 0.5}, "concept_similarity": {"min": -1.0}, "overrides_file": str(overrides)})
    by_id = {r["image_id"]: r for r in accepted2}
    revived = by_id[screened_out["image_id"]]
    assert revived["screening"]["review"] == "accept" and revived["screening"]["review_note"] == "looks fine to me"
    assert any("top 50%" in reason for reason in revived["screening"]["overridden_reasons"])
    assert (data / "mycanvas" / revived["file_name"]).is_file()
    dropped = next(r for r in rejected2 if r["image_id"] == kept["image_id"])
    assert dropped["reason_codes"][-1] == "review_rejected" and "the cone is floating" in dropped["reasons"][-1]
    assert not (data / "mycanvas" / kept["file_name"]).exists()
    if geometric:
        assert geometric[0]["image_id"] in by_id
    problems = " ".join(p["reason"] for p in result.problems)
    assert "'no_such/000', which is not a built image" in problems and "'maybe'" in problems
    sheet = (data / "mycanvas_review/index.html").read_text()
    assert screened_out["image_id"] in sheet and "data:image/jpeg;base64," in sheet and "review: reject" in sheet
    summary = json.loads((data / "mycanvas_review/summary.json").read_text())
    assert summary["overrides"]["unknown_image_ids"] == ["no_such/000"] and summary["overrides"]["reject"] == 2
    # Overrides are honoured without any CLIP backend too (curation of the geometric export).
    _, _, accepted3, rejected3 = _export(project, screening={"overrides_file": str(overrides)})
    assert screened_out["image_id"] in {r["image_id"] for r in accepted3}
    assert kept["image_id"] in {r["image_id"] for r in rejected3}
    # An accept decision also overrides the geometric checks (every image too small here).
    overrides.write_text(f"{kept['image_id']},accept\n")
    _, _, accepted4, rejected4 = _export(project, screening={"overrides_file": str(overrides)},
                                         filter={"min_area_fraction": 0.9})
    assert [r["image_id"] for r in accepted4] == [kept["image_id"]] and len(rejected4) == 11
    assert "min_area_fraction" in " ".join(accepted4[0]["screening"]["overridden_reasons"])
    assert (data / "mycanvas" / accepted4[0]["file_name"]).is_file()


def test_enabled_without_a_backend_is_an_error(project):
    with pytest.raises(ScreeningConfigError, match="neither clip.backend nor detector.backend"):
        _export(project, screening={"enabled": True})
    with pytest.raises(ValueError, match="top_fraction"):
        load_config(project[2], screening={"caption_score": {"top_fraction": 1.5}})
    _, _, accepted, _ = _export(project, ScreeningModels(HashClip()), screening={"enabled": False}, **CLIP_ON)
    assert all("screening" not in r for r in accepted)


def test_screened_export_loads_as_imagefolder(project):
    datasets = pytest.importorskip("datasets")
    _, data, _ = project
    _, _, accepted, _ = _export(project, ScreeningModels(HashClip(), ClassDetector()), **CLIP_ON,
                                detector={"backend": "owlvit"}, screening=PERMISSIVE)
    dataset = datasets.load_dataset("imagefolder", data_dir=str(data / "mycanvas"), split="train")
    assert len(dataset) == len(accepted)
    assert set(dataset[0]["screening"]) >= {"caption_score", "concept_similarity", "detected", "review"}


def test_report_with_fake_backends_over_mycanvas_and_generated_images(project):
    root, data, config_file = project
    _, _, accepted, _ = _export(project)
    generated = root / "generated"
    generated.mkdir(exist_ok=True)
    for k, row in enumerate(accepted[:3]):
        shutil.copy(data / "mycanvas" / row["file_name"], generated / f"{k}.png")
    token = {c["concept"]: c["token"] for row in accepted for c in row["concepts"]}
    concepts = accepted[0]["concepts"]
    prompt = " and ".join(f"{c['token']} {c['class_name']}" for c in concepts)
    lines = [{"image": "0.png", "prompt": f"a photo of {prompt} in a garden", "concepts": [c["concept"] for c in concepts]},
             {"images": ["1.png", "2.png"], "prompt": f"a photo of {prompt} on the moon", "kind": "held_out",
              "concepts": [c["concept"] for c in concepts]},
             {"image": "3.png", "prompt": "missing image", "concepts": [concepts[0]["concept"]]},
             {"image": "0.png", "prompt": "x", "concepts": ["unknown_concept"]}]
    (generated / "prompts.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    config = load_config(config_file, evaluation={"generated_dir": str(generated), "crop_padding": 0.05})
    evaluation = run_evaluation(config, load_registry(config.paths.registry), config.paths.mycanvas,
                                HashClip(), ClassDetector(), HashClip())
    assert set(evaluation["sets"]) == {"mycanvas", "generated"}
    mycanvas = evaluation["sets"]["mycanvas"]
    assert mycanvas["summary"]["images"] == len(accepted) and mycanvas["summary"]["detection_rate"] == 1.0
    assert set(mycanvas["breakdowns"]["by_composition"]) == {r["composition"] for r in accepted}
    first = mycanvas["images"][0]
    assert "<new" not in first["prompt"] and all(t not in first["prompt"] for t in token.values())
    gen = evaluation["sets"]["generated"]["summary"]
    assert gen["images"] == 3 and gen["ti_clip"]["train_images"] == 1 and gen["ti_clip"]["held_out_images"] == 2
    assert gen["ti_clip"]["gap"] == pytest.approx(gen["ti_clip"]["train"] - gen["ti_clip"]["held_out"])
    assert evaluation["not_computed"] == []
    problems = " ".join(p["reason"] for p in evaluation["problems"])
    assert "does not exist" in problems and "unknown concept(s) ['unknown_concept']" in problems
    stats = write_report(config.paths.mycanvas, config.paths.reports, config.report, evaluation)
    assert stats["not_computed"] == []
    markdown = (data / "reports/report.md").read_text()
    assert "## Metrics" in markdown and "| Generated images | all |" in markdown and "![metrics](metrics.png)" in markdown
    html = (data / "reports/report.html").read_text()
    assert html.count("data:image/jpeg;base64,") == len(accepted) + 3 and "CP-CLIP" in html
    assert (data / "reports/metrics.png").stat().st_size > 1000
    report = json.loads((data / "reports/report.json").read_text())
    assert report["evaluation"]["sets"]["generated"]["summary"]["images"] == 3


def test_tiny_real_models_through_dagster(project, tmp_path_factory):
    """The resources, the mycanvas screening hook and the report hook, with tiny models loaded from disk."""
    pytest.importorskip("open_clip")
    from gen4gen.tiny_scoring_models import dino_dir, open_clip_dir, owlvit_dir

    root, data, config_file = project
    models = tmp_path_factory.mktemp("tiny_models_dagster")
    generated = root / "generated_dagster"
    generated.mkdir(exist_ok=True)
    row = _rows(data / "mycanvas/metadata.jsonl")[0]
    shutil.copy(data / "mycanvas" / row["file_name"], generated / "a.png")
    (generated / "prompts.jsonl").write_text(json.dumps({"image": "a.png", "prompt": "a photo on the moon",
                                                         "concepts": [c["concept"] for c in row["concepts"]],
                                                         "kind": "held_out"}) + "\n")
    tiny = root / "tiny.toml"
    tiny.write_text(config_file.read_text() + f"""
[clip]
backend = "open_clip"
weights_path = "{open_clip_dir(models).as_posix()}"
device = "cpu"
dtype = "fp32"
[detector]
backend = "owlvit"
model = "{owlvit_dir(models).as_posix()}"
threshold = 0.0
device = "cpu"
[dino]
backend = "transformers"
model = "{dino_dir(models).as_posix()}"
device = "cpu"
[screening]
caption_score = {{ min = -1.0 }}
concept_similarity = {{ top_fraction = 0.5 }}
[evaluation]
generated_dir = "{generated.as_posix()}"
""")
    defs = build_definitions(config_file=str(tiny))
    result = defs.resolve_job_def("publish_dataset").execute_in_process(instance=DagsterInstance.ephemeral())
    assert result.success
    accepted = _rows(data / "mycanvas/metadata.jsonl")
    rejected = _rows(data / "mycanvas/rejected.jsonl")
    assert accepted and all(isinstance(r["screening"]["caption_score"], float) for r in accepted)
    assert any("low_concept_similarity" in r["reason_codes"] for r in rejected)
    report = json.loads((data / "reports/report.json").read_text())
    assert report["evaluation"]["backends"]["clip"]["backend"] == "open_clip"
    summary = report["evaluation"]["sets"]["mycanvas"]["summary"]
    assert summary["images"] == len(accepted) and summary["cp_clip"] is not None and summary["dino"] is not None
    assert report["evaluation"]["sets"]["generated"]["summary"]["ti_clip"]["held_out_images"] == 1
    assert not any("CP-CLIP" in note for note in report["not_computed"])
    metadata = result.asset_materializations_for_node("mycanvas")[0].metadata
    assert metadata["screening"].value["enabled"] is True
    # Leave the module's project as the other tests expect it: the geometric export.
    _export(project)
