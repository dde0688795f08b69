"""Invalid configuration is refused before any work: one line per problem (file, dotted key, what
is allowed), exit code 2, no traceback; and runs may not pick their own paths from the UI."""
from __future__ import annotations

import pytest
from dagster import ConfigurableResource, DagsterInstance, Definitions, asset, define_asset_job

from gen4gen.cli import main
from gen4gen.config import PROFILES, ConfigError, PipelineConfig, load_config
from resources.settings import PipelineSettings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE", "GEN4GEN_ALLOW_RUN_PATHS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./gen4gen.toml
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return monkeypatch


def problems_of(tmp_path, text: str) -> list[str]:
    file = tmp_path / "bad.toml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def test_negative_images_per_composition_stops_materialize_before_anything_is_deleted(clean_env, small_project,
                                                                                     capsys):
    _, data, config_file = small_project
    config_file.write_text(config_file.read_text().replace("images_per_composition = 3",
                                                           "images_per_composition = -3"))
    exported = data / "mycanvas" / "cat+cup_000.png"
    exported.parent.mkdir(parents=True)
    exported.write_bytes(b"an image exported by an earlier run")
    code = main(["--config", str(config_file), "materialize"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"configuration error: {config_file}: layout.images_per_composition: "
                                        f"must be ≥ 1 (got -3)"]
    assert exported.read_bytes() == b"an image exported by an earlier run"
    assert not (data / "build").exists() and not (small_project[0] / "dagster_home").exists()  # no run at all


def test_negative_canvas_size_is_one_line_with_the_allowed_range(clean_env, tmp_path, capsys):
    file = tmp_path / "g.toml"
    file.write_text("[composition]\ncanvas_size = -512\n")
    assert main(["--config", str(file), "check-weights"]) == 2
    err = capsys.readouterr().err
    assert err == f"configuration error: {file}: composition.canvas_size: must be ≥ 32 (got -512)\n"
    assert "Traceback" not in err and "pydantic" not in err


def test_misspelt_key_wrong_type_and_toml_syntax_error_name_the_file(clean_env, tmp_path, capsys):
    assert problems_of(tmp_path, "[layout]\nimages_per_compositon = 3\n") == [
        f"{tmp_path / 'bad.toml'}: layout.images_per_compositon: unknown key; did you mean 'images_per_composition'?"]
    assert problems_of(tmp_path, "[layot]\nimages_per_composition = 3\n")[0].endswith(
        "layot: unknown key; did you mean 'layout'?")
    assert problems_of(tmp_path, '[composition]\ncanvas_size = "big"\n') == [
        f"{tmp_path / 'bad.toml'}: composition.canvas_size: expected an integer (got \"big\")"]
    assert problems_of(tmp_path, "[filter]\nmin_visible_fraction = true\n")[0].endswith(
        "filter.min_visible_fraction: expected a number (got true)")
    (syntax,) = problems_of(tmp_path, "[layout]\nimages_per_composition = = 3\n")
    assert syntax.startswith(f"{tmp_path / 'bad.toml'}: not valid TOML: ") and "line 2" in syntax
    (tmp_path / "bad.toml").write_text("[layout\n")
    assert main(["--config", str(tmp_path / "bad.toml"), "check-weights"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(ConfigError, match="missing.toml: configuration file does not exist"):
        load_config(tmp_path / "missing.toml")
    clean_env.setenv("GEN4GEN_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone.toml: configuration file does not exist \(named by GEN4GEN_CONFIG\)"):
        load_config()


def test_every_problem_is_listed_at_once(clean_env, tmp_path):
    problems = problems_of(tmp_path, "seed = -1\n[layout]\nimages_per_composition = 0\nmax_overlap = 1.5\n"
                                     "[recolour]\nharmonisation_strength = -0.1\n")
    assert [p.split(": ")[1] for p in problems] == ["seed", "layout.images_per_composition", "layout.max_overlap",
                                                    "recolour.harmonisation_strength"]


@pytest.mark.parametrize("section, key, value, expected", [
    # positive sizes
    ("input", "min_photo_side", "0", "must be ≥ 1"),
    ("input", "max_photo_megapixels", "0", "must be > 0"),
    ("segmentation", "input_size", "-1024", "must be ≥ 1"),
    ("recolour", "resolution", "0", "must be ≥ 1"),
    ("recolour", "resolution", "1020", "must be a multiple of 8"),
    ("report", "contact_sheet_thumb", "0", "must be ≥ 1"),
    ("clip", "batch_size", "0", "must be ≥ 1"),
    ("detector", "batch_size", "-8", "must be ≥ 1"),
    ("recolour", "batch_size", "0", "must be ≥ 1"),
    ("screening", "review_thumb", "0", "must be ≥ 1"),
    ("evaluation", "html_thumb", "0", "must be ≥ 1"),
    ("layout", "llm_template_canvas", "0", "must be ≥ 1"),
    # counts
    ("proposal", "max_compositions", "0", "must be ≥ 1"),
    ("proposal", "sizes", "[1, 2]", "must be ≥ 2"),
    ("proposal", "sizes", "[]", "at least 1 item"),
    ("segmentation", "rounds", "0", "must be ≥ 1"),
    ("layout", "max_attempts", "0", "must be ≥ 1"),
    ("layout", "llm_max_attempts", "0", "must be ≥ 1"),
    ("recolour", "num_inference_steps", "0", "must be ≥ 1"),
    ("regeneration", "max_attempts", "0", "must be ≥ 1"),
    ("caption", "max_new_tokens", "0", "must be ≥ 1"),
    ("dvc", "checksum_jobs", "0", "must be ≥ 1"),
    # fractions and probabilities
    ("filter", "min_visible_fraction", "1.2", "must be in [0, 1]"),
    ("filter", "min_area_fraction", "-0.01", "must be in [0, 1]"),
    ("filter", "max_frame_fraction", "2", "must be in [0, 1]"),
    ("layout", "max_overlap", "-0.5", "must be in [0, 1]"),
    ("composition", "flip_probability", "1.5", "must be in [0, 1]"),
    ("recolour", "harmonisation_strength", "1.01", "must be in [0, 1]"),
    ("recolour", "strength", "0", "must be in (0, 1]"),
    ("recolour", "refiner_denoising_start", "1", "must be in (0, 1)"),
    ("segmentation", "mask_threshold", "1", "must be in (0, 1)"),
    ("segmentation", "converge_iou", "1.5", "must be in [0, 1]"),
    ("detector", "threshold", "-0.1", "must be in [0, 1]"),
    ("screening", "detection_min_iou", "1.1", "must be in [0, 1]"),
    ("regeneration", "max_removed_share", "1.5", "must be in [0, 1]"),
    ("evaluation", "missing_concept_score", "2", "must be in [-1, 1]"),
    ("composition", "png_compress_level", "10", "must be in [0, 9]"),
    # ordered pairs and relations
    ("layout", "size_ratio_range", "[0.9, 0.4]", "the lower bound 0.9 is above the upper bound 0.4"),
    ("layout", "size_ratio_range", "[0.0, 0.0]", "the upper bound must be above 0"),
    ("layout", "min_camera_height", "0", "must be > 0"),
    ("segmentation", "ghost_alpha", "0", "must be in [1, 255]"),
    ("segmentation", "max_rectangularity", "1.5", "must be in [0, 1]"),
    ("filter", "max_scale_contradiction", "0.5", "must be ≥ 1"),
    ("layout", "ground_band", "[0.97, 0.62]", "the lower bound 0.97 is above the upper bound 0.62"),
    ("layout", "largest_object_height", "[0.5, 1.2]", "must be in (0, 1]"),
    ("layout", "largest_object_height", "[0.5]", "must be a list of two values [low, high]"),
    ("layout", "default_size_ratio", "0.2\nsize_ratio_range = [0.4, 1.0]",
     "must lie within layout.size_ratio_range [0.4, 1.0]"),
    ("input", "downscale_long_side", "32", "must be ≥ input.min_photo_side (64)"),
    # templates a stage formats
    ("caption", "concept_token", '"<new>"', "must contain the placeholder {index}"),
    ("recolour", "prompt_template", '"a photo of {scene}"', "unknown placeholder {scene}"),
    ("detector", "query_template", '"a {class}"', "unknown placeholder {class}"),
])
def test_ranges_and_relations_of_every_section(clean_env, tmp_path, section, key, value, expected):
    problems = problems_of(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'bad.toml'}: {section}.{key}") and expected in problems[0], problems[0]


def test_nested_and_secret_values(clean_env, tmp_path):
    (line,) = problems_of(tmp_path, "[screening.caption_score]\ntop_fraction = 1.5\n")
    assert line.endswith("screening.caption_score.top_fraction: must be in (0, 1] (got 1.5)")
    (line,) = problems_of(tmp_path, "[layout.llm]\ntemperature = 3\n")
    assert line.endswith("layout.llm.temperature: must be in [0, 2] (got 3)")
    (line,) = problems_of(tmp_path, '[caption.endpoint]\napi_key = 12345\n')
    assert "caption.endpoint.api_key" in line and "12345" not in line  # a key is never echoed


def test_problems_name_the_layer_they_come_from(clean_env, tmp_path):
    with pytest.raises(ConfigError, match=r"^override: data_dir: must not be empty"):
        load_config(data_dir="")
    clean_env.setenv("GEN4GEN_PROFILE", "gpu")
    with pytest.raises(ConfigError, match=r"^GEN4GEN_PROFILE: profile: unknown profile 'gpu'"):
        load_config()


def test_defaults_and_profiles_are_valid(clean_env):
    assert PipelineConfig().layout.images_per_composition == 6
    for profile in PROFILES:
        assert load_config(profile=profile).profile == profile
    # Boundary values that mean something stay allowed.
    config = load_config(filter={"min_visible_fraction": 0.0, "max_frame_fraction": 1.0},
                         layout={"ground_band": (0.8, 0.8), "max_overlap": 0.0},
                         recolour={"harmonisation_strength": 1.0}, detector={"threshold": 0.0})
    assert config.layout.ground_band == (0.8, 0.8)


# ---- the Dagster side: the same lines inside a run, and paths a run may not choose
class SettingsReader(ConfigurableResource):
    """Stands for the resources that hold the settings (segmentation, lineage, DVC, ...)."""

    settings: PipelineSettings


SEEN: dict = {}


@asset
def settings_probe(settings: PipelineSettings, reader: SettingsReader) -> None:
    SEEN.update(data=settings.paths.data, nested=reader.settings.paths.data, profile=settings.config.profile)


def run_probe(settings: PipelineSettings, run_settings: dict | None = None) -> tuple[bool, str]:
    """Runs a one-asset job holding ``settings`` as the code location does; (success, failure message)."""
    SEEN.clear()
    defs = Definitions(assets=[settings_probe], jobs=[define_asset_job("probe", selection=[settings_probe])],
                       resources={"settings": settings, "reader": SettingsReader(settings=settings)})
    run_config = {"resources": {"settings": {"config": run_settings}}} if run_settings else {}
    result = defs.resolve_job_def("probe").execute_in_process(instance=DagsterInstance.ephemeral(),
                                                               run_config=run_config, raise_on_error=False)
    for event in result.all_events:
        # The settings are checked when the run's resources start (before any step).
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            while error.cause is not None:
                error = error.cause
            return False, error.message
    return result.success, ""


def test_a_run_fails_with_the_same_lines_not_a_pydantic_traceback(clean_env, tmp_path):
    file = tmp_path / "g.toml"
    file.write_text("[layout]\nimages_per_composition = -3\n[composition]\ncanvas_size = -512\n")
    success, message = run_probe(PipelineSettings(config_file=str(file)))
    assert not success and not SEEN
    assert message.startswith("gen4gen.config.errors.ConfigError: ")
    assert message.removeprefix("gen4gen.config.errors.ConfigError: ").strip().splitlines() == [
        f"{file}: layout.images_per_composition: must be ≥ 1 (got -3)",
        f"{file}: composition.canvas_size: must be ≥ 32 (got -512)"]
    assert "ValidationError" not in message and "pydantic" not in message


def test_a_run_may_not_choose_its_own_paths_unless_enabled(clean_env, tmp_path):
    built = tmp_path / "built"
    other = tmp_path / "elsewhere"
    settings = PipelineSettings(data_dir=str(built))
    assert run_probe(settings) == (True, "") and SEEN["data"] == SEEN["nested"] == built
    # The launchpad's "scaffold all default config" repeats the code location's values: allowed.
    assert run_probe(settings, {"data_dir": str(built)}) == (True, "")
    # Another profile is allowed, and keeps the code location's data folder.
    assert run_probe(settings, {"profile": "paper"}) == (True, "")
    assert SEEN["data"] == built and SEEN["profile"] == "paper"
    success, message = run_probe(settings, {"data_dir": str(other)})
    assert not success and not SEEN
    assert f"resources.settings.config.data_dir: refused ('{other}'" in message
    assert "GEN4GEN_ALLOW_RUN_PATHS=1" in message
    success, message = run_probe(settings, {"config_file": str(tmp_path / "any.toml")})
    assert not success and "resources.settings.config.config_file: refused" in message
    clean_env.setenv("GEN4GEN_ALLOW_RUN_PATHS", "1")
    assert run_probe(settings, {"data_dir": str(other)}) == (True, "") and SEEN["data"] == other


def test_device_names_one_gpu_of_several(clean_env, tmp_path):
    file = tmp_path / "devices.toml"
    file.write_text('[recolour]\ndevice = "cuda:3"\n[clip]\ndevice = "cpu"\n', encoding="utf-8")
    config = load_config(file)
    assert (config.recolour.device, config.clip.device) == ("cuda:3", "cpu")
    problems = problems_of(tmp_path, '[recolour]\ndevice = "gpu"\n[caption]\ndevice = "cuda:x"\n')
    assert len(problems) == 2 and all("must be auto, cpu, cuda or cuda:N" in line for line in problems), problems


def test_a_gpu_index_beyond_those_visible_is_refused_by_name(monkeypatch):
    torch = pytest.importorskip("torch")
    from gen4gen.models.common import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match=r"'cuda:2'.*sees 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES=4,5\)"):
        resolve_device("cuda:2")


def test_a_ray_address_from_the_command_line_keeps_the_files_other_ray_settings(clean_env, tmp_path):
    from gen4gen.config.loading import RAY_ADDRESS_ENV

    file = tmp_path / "ray.toml"
    file.write_text("[ray]\nrepaint_workers = 3\n", encoding="utf-8")
    assert load_config(file).ray.enabled is False
    clean_env.setenv(RAY_ADDRESS_ENV, "head.example:6379")
    ray = load_config(file).ray
    assert (ray.enabled, ray.address, ray.repaint_workers) == (True, "head.example:6379", 3)
