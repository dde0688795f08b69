"""The personalisation loop end to end on tiny models: `gen4gen personalise --tiny` trains a MyCanvas
model and the photos-only baseline, samples them, and the report compares them; prompts, held-out
prompts, lineage and staleness are checked on what it wrote."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from .conftest import PROJECT_ROOT, create_small_project, make_concepts

if importlib.util.find_spec("diffusers") is None or importlib.util.find_spec("open_clip") is None:
    pytest.skip("diffusers / open_clip are not installed (the `paper` extra; make test installs it)",
                allow_module_level=True)

RUNS = """
[training]
max_train_steps = 12
[[training.runs]]
name = "pair"
source = "mycanvas"
strategy = "background_in_text"
concepts = ["blue_box", "red_ball"]
[[training.runs]]
name = "baseline"
source = "photos"
[sampling]
images_per_prompt = 1
held_out_prompts_per_set = 1
"""
METRICS = ["cp_clip", "detection_rate", "personalisation", "clip_t", "clip_i", "dino"]


CLI = [sys.executable, "-c", "import sys; from gen4gen.cli import main; sys.exit(main(sys.argv[1:]))"]


def _cli(config, home, *args: str, overlay=None) -> subprocess.CompletedProcess:
    """`gen4gen ARGS`; ``overlay``: the tiny models' settings (as `personalise --tiny` wrote them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEN4GEN_")}
    env.update({"DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", **({"GEN4GEN_CONFIG_OVERLAY": str(overlay)}
                                                                      if overlay else {})})
    result = subprocess.run([*CLI, "--config", str(config), *args], env=env, capture_output=True, text=True,
                            timeout=600, cwd=PROJECT_ROOT)
    assert result.returncode == 0, f"gen4gen {' '.join(args)}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("personalise")
    data, config = create_small_project(root, RUNS)
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    _cli(config, home, "materialize")
    output = _cli(config, home, "personalise", "--tiny").stdout
    return data, config, home, output


def _load(config_path, data):
    from gen4gen.concepts import load_registry
    from gen4gen.config import load_config
    from gen4gen.config.loading import OVERLAY_ENV

    os.environ[OVERLAY_ENV] = str(data / ".tiny_models" / "personalise-tiny.toml")
    try:
        config = load_config(config_path)
    finally:
        del os.environ[OVERLAY_ENV]
    return config, load_registry(config.paths.registry)


def test_both_models_are_trained_sampled_and_compared_with_every_metric(trained):
    data, _, _, output = trained
    assert "3 runs succeeded, 0 failed" in output
    report = json.loads((data / "reports" / "report.json").read_text())
    evaluation = report["evaluation"]
    assert set(evaluation["models"]) == {"pair", "baseline"}
    assert evaluation["models"]["baseline"]["source"] == "photos" and not evaluation["models"]["pair"]["stale"]
    for run in ("pair", "baseline"):
        summary = evaluation["sets"][f"model:{run}"]["summary"]
        for metric in METRICS:
            assert isinstance(summary[metric], float), (run, metric, summary[metric])
        assert all(isinstance(summary["ti_clip"][k], float) for k in ("train", "held_out", "gap"))
        assert summary["images"] == len((data / "generated" / run / "prompts.jsonl").read_text().splitlines())
        # Weights a plain diffusers pipeline loads, the tokens' embeddings, the log and the curve.
        model = data / "personalised" / run
        assert (model / "pytorch_custom_diffusion_weights.bin").stat().st_size > 0
        assert (model / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len((model / "training_log.jsonl").read_text().splitlines()) == 12
    markdown = (data / "reports" / "report.md").read_text()
    assert "| pair | MyCanvas, background_in_text | all |" in markdown
    assert "| baseline | photos only (baseline) | all |" in markdown
    figures = sorted((data / "reports").glob("models_*.png"))
    assert figures and f"![{figures[0].name}]({figures[0].name})" in markdown
    assert "Personalised models" in (data / "reports" / "report.html").read_text()


def test_training_prompts_are_those_the_captions_asset_wrote(trained):
    from gen4gen.config import TrainingRun
    from gen4gen.personalisation import training_set

    data, config_path, _, _ = trained
    config, registry = _load(config_path, data)
    written: dict[str, dict[str, set]] = {}
    for path in (data / "build" / "captions").glob("*/*.json"):
        if path.name != "manifest.json":
            caption = json.loads(path.read_text())
            for name, text in caption.items():
                if isinstance(text, str):
                    written.setdefault(path.parent.name, {}).setdefault(name, set()).add(text)
    for strategy in ("global_composition_token", "repeated_concept_tokens", "background_in_text", "detailed"):
        tset = training_set(config, registry, TrainingRun(name="x", strategy=strategy))
        key = "detailed_with_tokens" if strategy == "detailed" else strategy
        assert tset.examples
        for example in tset.examples:
            assert example["prompt"] in written[example["composition"]][key]
        composition_tokens = set(tset.composition_tokens.values())
        assert bool(composition_tokens) == (strategy == "global_composition_token")
        assert composition_tokens <= set(tset.tokens)  # trained as new tokens, like the concepts'


def test_held_out_prompts_never_appear_in_training_prompts(trained):
    from gen4gen.personalisation import prompt_slots

    data, config_path, _, _ = trained
    rows = [json.loads(line) for line in (data / "generated" / "pair" / "prompts.jsonl").read_text().splitlines()]
    captions = [json.loads(line)["captions"] for line in (data / "mycanvas" / "metadata.jsonl").read_text().splitlines()]
    training_text = " ".join(text for caption in captions for text in caption.values())
    held_out = [row for row in rows if row["kind"] == "held_out"]
    assert held_out and any(row["kind"] == "train" for row in rows)
    for row in held_out:
        assert row["prompt"] not in training_text and row["background"] not in training_text
    # A held-out background that a training prompt mentions is left out, and said so.
    config, registry = _load(config_path, data)
    used = json.loads((data / "mycanvas" / "metadata.jsonl").read_text().splitlines()[0])["background_prompt"]
    config = config.model_copy(update={"sampling": config.sampling.model_copy(
        update={"held_out_backgrounds": [used, "a quiet library"]})})
    slots, notes = prompt_slots(config, registry, config.training.runs[0])
    assert {s.background for s in slots if s.kind == "held_out"} == {"a quiet library"}
    assert any(used in note for note in notes)


def test_a_generated_image_s_lineage_reaches_the_training_images_and_their_photos(trained):
    data, config_path, home, _ = trained
    image = sorted((data / "generated" / "pair").glob("*.png"))[0]
    tree = json.loads(_cli(config_path, home, "lineage", str(image), "--json", "--verify").stdout)
    text = json.dumps(tree)
    assert '"training_set"' in text and '"training_image"' in text
    assert "mycanvas/blue_box+red_ball_" in text  # the MyCanvas images it was trained on ...
    assert "concepts/red_ball/photo" in text and "concepts/blue box/photo" in text  # ... back to their photos


def test_adding_a_concept_marks_stale_only_the_models_whose_set_includes_it(trained):
    data, config_path, home, _ = trained
    make_concepts(data / "concepts", {"yellow_star": [("triangle", (230, 210, 40))]})
    _cli(config_path, home, "materialize")
    overlay = data / ".tiny_models" / "personalise-tiny.toml"
    plan = json.loads(_cli(config_path, home, "plan", "--json", overlay=overlay).stdout)["personalisation"]
    lines = {line.split(":", 1)[0]: line for line in plan}
    assert lines["personalised_models[pair]"].endswith(": current")  # its concepts did not change
    assert "its training set changed (was 4 images)" in lines["personalised_models[baseline]"]
    assert "not rebuilt automatically" in lines["personalised_models[baseline]"]
    assert "stale" in lines["generated_images[baseline]"]
    assert not (data / "personalised" / "baseline" / ".staging").exists()  # nothing retrained on its own


def test_class_prior_images_from_a_folder_or_generated_once(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from gen4gen.config import PipelineConfig
    from gen4gen.stages.class_priors import class_prior_examples
    from gen4gen.tiny_models import tiny_sd15

    base = tiny_sd15(tmp_path / "models")
    tset = SimpleNamespace(class_names={"tom": "cat", "rex": "dog"})
    folder = tmp_path / "priors"
    for name, count in (("cat", 2), ("dog", 1)):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32, 32), (i * 40, 90, 200)).save(folder / name / f"{i}.png")

    def config(**training):
        return PipelineConfig.model_validate({"data_dir": str(tmp_path / "data"), "training": training,
                                              "sampling": {"num_inference_steps": 2}})

    examples = class_prior_examples(config(class_priors=str(folder), num_class_images=4), tset, base, "cpu")
    # Interleaved class by class, so the first images cover every class.
    assert [e.prompt for e in examples] == ["a photo of a cat", "a photo of a dog", "a photo of a cat"]
    with pytest.raises(ValueError, match="no images for class 'cat' in .*priors/cat/cat"):
        class_prior_examples(config(class_priors=str(folder / "cat")), tset, base, "cpu")
    generated = config(class_priors="generate", num_class_images=2, resolution=64)
    first = class_prior_examples(generated, tset, base, "cpu")
    assert sorted(e.prompt for e in first) == ["a photo of a cat", "a photo of a dog"]
    stamps = {e.image_path: e.image_path.stat().st_mtime_ns for e in first}
    assert all(str(p).startswith(str(tmp_path / "data" / "build" / "class_priors")) for p in stamps)
    again = class_prior_examples(generated, tset, base, "cpu")  # cached: nothing drawn again
    assert {e.image_path: e.image_path.stat().st_mtime_ns for e in again} == stamps
    assert config().training.class_priors == "none" and class_prior_examples(config(), tset, base, "cpu") == []


def test_export_rows_are_parsed_once_and_read_again_when_the_file_changes(tmp_path, monkeypatch):
    import gen4gen.personalisation as personalisation
    from gen4gen.io import atomic_write_text

    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(personalisation.json, "loads", lambda text: parsed.append(text) or real_loads(text))
    atomic_write_text(tmp_path / "metadata.jsonl", '{"composition": "a+b"}\n{"composition": "b+c"}\n')
    first = personalisation._mycanvas_rows(tmp_path)
    assert personalisation._mycanvas_rows(tmp_path) is first and len(parsed) == 2
    atomic_write_text(tmp_path / "metadata.jsonl", '{"composition": "a+c"}\n')  # a new export replaces the file
    assert personalisation._mycanvas_rows(tmp_path) == [{"composition": "a+c"}] and len(parsed) == 3
    (tmp_path / "metadata.jsonl").unlink()
    assert personalisation._mycanvas_rows(tmp_path) == []
