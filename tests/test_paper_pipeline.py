"""The whole asset graph under the `paper` profile, on the CPU, with tiny random-weight models
(IS-Net, SDXL inpainting + refiner, LLaVA) and a loopback LLM endpoint, through Dagster in process."""
from __future__ import annotations

import json

import numpy as np
import pytest
from dagster import DagsterInstance
from PIL import Image

from gen4gen_assets.definitions import build_definitions
from gen4gen_assets.runner import materialize_all

from . import paper_models
from gen4gen.tiny_scoring_models import open_clip_dir, owlvit_dir
from .conftest import make_concepts, object_photo
from .openai_stub import StubServer, good_layout, requested_objects

SECRET = "sk-pipeline-secret-987"


@pytest.fixture(scope="module")
def paper_project(tmp_path_factory):
    models = tmp_path_factory.getbasetemp() / "paper_models"
    root = tmp_path_factory.mktemp("paper_project")
    data = root / "data"
    make_concepts(data / "concepts", {"blue box": [("rect", (40, 60, 200))],
                                      "green_cone": [("triangle", (40, 170, 60))]})
    # Opaque photos: segmented by the IS-Net model, not by their own alpha.
    (data / "concepts" / "red_ball").mkdir(parents=True)
    for k in range(2):
        object_photo("ellipse", (200, 40 + 20 * k, 40), seed=k, transparent=False).save(
            data / "concepts" / "red_ball" / f"photo {k}.jpg")

    def responder(body):
        names = requested_objects(body)
        # Every layout with the cone gets unusable replies: those fall back, recorded.
        return "Sure! Here is the layout you asked for." if "green_cone" in names else good_layout(names)

    with StubServer(responder) as server:
        config = root / "gen4gen.toml"
        config.write_text(f"""
data_dir = "{data.as_posix()}"
seed = 3
[proposal]
max_compositions = 2
sizes = [2]
[layout]
images_per_composition = 2
llm_max_attempts = 2
[layout.llm]
base_url = "{server.base_url}"
model = "stub-llm"
api_key_env = "GEN4GEN_PIPELINE_KEY"
timeout_s = 10
[composition]
canvas_size = 96
[filter]
photo_checks = false  # the random-weight IS-Net's masks touch the photos' frames: every image would be rejected
[segmentation]
isnet_checkpoint = "{paper_models.isnet_checkpoint(models).as_posix()}"
input_size = 64
rounds = 2
device = "cpu"
[recolour]
sdxl_model = "{paper_models.sdxl_inpaint(models).as_posix()}"
refiner_model = "{paper_models.sdxl_refiner(models).as_posix()}"
variant = ""
resolution = 64
num_inference_steps = 4
device = "cpu"
dtype = "fp32"
batch_size = 2
[caption]
vlm_model = "{paper_models.llava(models).as_posix()}"
device = "cpu"
dtype = "fp32"
max_new_tokens = 8
[report]
contact_sheet_thumb = 48
[clip]
weights_path = "{open_clip_dir(models).as_posix()}"
device = "cpu"
dtype = "fp32"
[detector]
model = "{owlvit_dir(models).as_posix()}"
threshold = 0.0
device = "cpu"
[screening]
caption_score = {{ min = -1.0 }}
concept_similarity = {{ min = -1.0 }}
""", encoding="utf-8")
        mp = pytest.MonkeyPatch()
        mp.setenv("GEN4GEN_PROFILE", "paper")  # the profile comes from the environment, as with `make PROFILE=paper`
        mp.setenv("GEN4GEN_PIPELINE_KEY", SECRET)
        mp.delenv("GEN4GEN_CONFIG", raising=False)
        mp.delenv("GEN4GEN_DATA_DIR", raising=False)
        try:
            instance = DagsterInstance.ephemeral()
            summary = materialize_all(build_definitions(config_file=str(config)), instance, log=lambda *_: None)
            yield data, summary, server
        finally:
            mp.undo()


def _read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _documents(folder):
    """{composition: document} of a per-composition stage: ``<key>.json`` or ``<key>/manifest.json``."""
    out = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path / "manifest.json").is_file():
            out[path.name] = _read(path / "manifest.json")
        elif path.suffix == ".json":
            out[path.stem] = _read(path)
    return out


def test_every_stage_runs_with_the_papers_backends(paper_project):
    data, summary, _ = paper_project
    assert not summary.failed, summary.failed
    build = data / "build"
    segmented = _read(build / "segmented/red_ball/manifest.json")
    assert [p["backend"] for p in segmented["photos"]] == ["isnet_torch", "isnet_torch"]
    assert segmented["segmenter"]["backend"] == "isnet_torch" and segmented["segmenter"]["device"] == "cpu"
    compositions = _documents(build / "layouts")
    assert len(compositions) == 2
    captions_by_key = _documents(build / "captions")
    for key in compositions:
        recoloured = _read(build / "recoloured" / key / "manifest.json")
        assert recoloured["backend"] == "sdxl"
        for entry in recoloured["images"]:
            assert entry["sdxl"]["refiner"] is True and entry["sdxl"]["steps"] == 4
            image = np.asarray(Image.open(build / "recoloured" / key / entry["image"]))
            assert image.shape == (96, 96, 3)
        captions = captions_by_key[key]
        assert captions["captioner"] == "vlm"
        for caption in captions["captions"]:
            assert caption["detailed"].strip()
            assert set(caption) >= {"global_composition_token", "repeated_concept_tokens", "background_in_text"}
    assert (data / "mycanvas" / "metadata.jsonl").is_file() and (data / "reports" / "report.md").is_file()
    # The profile's CLIP and OWL-ViT: MyCanvas screened (thresholds opened up for random weights)
    # and CP-CLIP measured.
    rows = [json.loads(line) for line in (data / "mycanvas" / "metadata.jsonl").read_text().splitlines()]
    assert rows and all(isinstance(row["screening"]["caption_score"], float) for row in rows)
    report = _read(data / "reports" / "report.json")
    assert report["evaluation"]["backends"]["clip"]["backend"] == "open_clip"
    assert report["evaluation"]["backends"]["detector"]["backend"] == "owlvit"
    assert report["evaluation"]["sets"]["mycanvas"]["summary"]["cp_clip"] is not None


def test_layouts_record_the_llm_exchange_and_the_fallback(paper_project):
    data, _, server = paper_project
    seen_fallback = seen_llm = False
    for document in _documents(data / "build/layouts").values():
        assert document["planner"] == "llm"
        for image in document["images"]:
            record = image["llm"]
            assert record["model"] == "stub-llm" and record["messages"][0]["role"] == "system"
            if "green_cone" in document["composition"]:
                seen_fallback = True
                assert image["planner"] == "rule_based" and record["fallback"] is True
                assert len(record["attempts"]) == 2 and "not valid JSON" in record["attempts"][-1]["error"]
                assert "the rule-based planner's layout is used" in image["notes"][0]
            else:
                seen_llm = True
                assert image["planner"] == "llm" and record["fallback"] is False
                assert record["attempts"][0]["response"].startswith('{"scene"')
    assert seen_fallback and seen_llm
    assert all(r["headers"].get("Authorization") == f"Bearer {SECRET}" for r in server.requests)
    # The key is never written anywhere under the data folder.
    for path in data.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jsonl", ".md", ".txt", ".csv"}:
            assert SECRET not in path.read_text(encoding="utf-8", errors="replace"), path
