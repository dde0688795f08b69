"""Custom Diffusion fine-tuning on a tiny random-weight SD 1.x pipeline (CPU, 64 px, seconds)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from gen4gen.custom_diffusion import (
    WEIGHTS_NAME,
    TrainingExample,
    TrainingParams,
    load_personalised_pipeline,
    sample_images,
    train_custom_diffusion,
)
from gen4gen.tiny_models import tiny_sd15

torch = pytest.importorskip("torch")

TOKENS = ["<new1>", "<new2>", "<comp1>"]
# One-character words are single byte-vocabulary tokens; "toy" is three, so it falls back to "ktn".
INITIALIZERS = ["a", "b", "toy"]
STEPS = 30
SAMPLE = dict(steps=4, guidance=3.0, resolution=64, output_type="np")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("custom_diffusion")


@pytest.fixture(scope="module")
def base(workdir):
    return tiny_sd15(workdir / "models")


@pytest.fixture(scope="module")
def examples(workdir):
    rng = np.random.default_rng(0)
    items = []
    for i, (prompt, colour) in enumerate([("<comp1> photo of a <new1> toy", (200, 40, 40)),
                                          ("<comp1> photo of a <new2> cup", (40, 60, 200))]):
        pixels = np.clip(np.array(colour) + rng.normal(0, 30, (80, 96, 3)), 0, 255).astype(np.uint8)
        path = workdir / f"photo {i}.png"
        Image.fromarray(pixels).save(path)
        items.append(TrainingExample(path, prompt))
    return items


def _params(base, **overrides):
    values = dict(base_model=base, resolution=64, max_train_steps=STEPS, learning_rate=3e-2, scale_lr=False,
                  train_batch_size=2, adam_weight_decay=1e-2, seed=3, log_every=10)
    values.update(overrides)
    return TrainingParams(**values)


def _train(base, examples, out, **overrides):
    calls = []
    result = train_custom_diffusion(examples, TOKENS, INITIALIZERS, _params(base, **overrides), out,
                                    progress=lambda step, loss, sec: calls.append((step, loss, sec)))
    return result, calls


@pytest.fixture(scope="module")
def trained(base, examples, workdir):
    return _train(base, examples, workdir / "trained")


@pytest.fixture(scope="module")
def untrained(base, examples, workdir):
    """Same seed, so the same images, noise and timesteps at every step, but a zero learning rate."""
    return _train(base, examples, workdir / "untrained", learning_rate=0.0)


@pytest.fixture(scope="module")
def base_models(base):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = dict(local_files_only=True)
    return dict(unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kw),
                vae=AutoencoderKL.from_pretrained(base, subfolder="vae", **kw),
                text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kw),
                tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **kw))


def test_loss_falls_on_a_fixed_batch(trained, untrained):
    losses = trained[0].losses
    assert len(losses) == STEPS
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.03, losses
    # Paired with the zero-lr run (identical noise and timesteps), learning must show at every late step.
    control = untrained[0].losses
    assert losses[0] == control[0]  # nothing learnt before the first step
    assert all(t < c for t, c in zip(losses[-10:], control[-10:])), (losses, control)


def test_only_custom_kv_and_new_token_rows_change(trained, base_models):
    pipe = trained[0].pipeline
    n_old = len(base_models["tokenizer"])

    # UNet: everything but the processors' own k/v is the base model's, bit for bit.
    base_unet = dict(base_models["unet"].named_parameters())
    custom = {}
    for name, param in pipe.unet.named_parameters():
        if ".processor." in name:
            custom[name] = param
        else:
            assert torch.equal(param, base_unet[name]), name
    assert {n for n, _ in pipe.unet.named_parameters() if ".processor." not in n} == set(base_unet)
    assert custom and all(n.endswith(("to_k_custom_diffusion.weight", "to_v_custom_diffusion.weight"))
                          for n in custom)
    assert all(".attn2." in n for n in custom)  # cross-attention only
    for name, param in custom.items():
        layer, kind = name.split(".processor.")
        start = base_unet[f"{layer}.{kind.split('_custom_diffusion')[0]}.weight"]  # what it was copied from
        assert not torch.equal(param, start), f"{name} did not train"

    for name, param in pipe.vae.named_parameters():
        assert torch.equal(param, dict(base_models["vae"].named_parameters())[name]), name

    base_text = dict(base_models["text_encoder"].named_parameters())
    trained_rows = pipe.text_encoder.get_input_embeddings().weight
    for name, param in pipe.text_encoder.named_parameters():
        if param is not trained_rows:
            assert torch.equal(param, base_text[name]), name
    assert trained_rows.shape[0] == n_old + len(TOKENS)
    # Pre-existing rows survive AdamW weight decay untouched; the new rows moved.
    assert torch.equal(trained_rows[:n_old], base_models["text_encoder"].get_input_embeddings().weight)
    for token, token_id in trained[0].token_ids.items():
        init = _initial_row(base_models, INITIALIZERS[TOKENS.index(token)])
        assert not torch.equal(trained_rows[token_id], init), token


def _initial_row(base_models, word):
    ids = base_models["tokenizer"].encode(word, add_special_tokens=False)
    if len(ids) != 1:
        ids = base_models["tokenizer"].encode("ktn", add_special_tokens=False)
    return base_models["text_encoder"].get_input_embeddings().weight[ids[0]]


def test_new_tokens_are_single_new_ids_initialised_from_their_words(trained, untrained, base_models):
    n_old = len(base_models["tokenizer"])
    tokenizer = trained[0].pipeline.tokenizer
    ids = trained[0].token_ids
    assert sorted(ids.values()) == list(range(n_old, n_old + len(TOKENS)))
    for token in TOKENS:
        assert tokenizer.encode(token, add_special_tokens=False) == [ids[token]]
    encoded = tokenizer.encode("<comp1> photo of a <new1> toy", add_special_tokens=False)
    assert encoded.count(ids["<new1>"]) == 1 and encoded.count(ids["<comp1>"]) == 1
    assert ids["<new2>"] not in encoded
    # With lr 0 (so no decay either), each new row is still its initializer's embedding.
    rows = untrained[0].pipeline.text_encoder.get_input_embeddings().weight
    for token, word in zip(TOKENS, INITIALIZERS):
        assert torch.equal(rows[ids[token]], _initial_row(base_models, word)), token
    assert not torch.equal(rows[ids["<new1>"]], rows[ids["<new2>"]])


def test_saved_weights_reload_into_plain_pipeline_and_reproduce_samples(trained, base):
    result = trained[0]
    prompts, seeds = ["<comp1> photo of a <new1> toy and a <new2> cup"], [11]
    in_memory = np.stack(sample_images(result.pipeline, prompts, seeds, n_per_prompt=2, **SAMPLE))
    reloaded_pipe = load_personalised_pipeline(base, result.output_dir, TOKENS)
    assert reloaded_pipe.tokenizer.encode("<new2>", add_special_tokens=False) == [result.token_ids["<new2>"]]
    reloaded = np.stack(sample_images(reloaded_pipe, prompts, seeds, n_per_prompt=2, **SAMPLE))
    # Training used the SDPA processor, the loader builds the classic one: equal up to rounding.
    np.testing.assert_allclose(reloaded, in_memory, rtol=0, atol=1e-5)
    # ...and the trained weights matter: the base model draws something else from the same seeds.
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)
    plain.load_textual_inversion(str(result.output_dir), weight_name="<new1>.bin", local_files_only=True)
    plain.load_textual_inversion(str(result.output_dir), weight_name="<new2>.bin", local_files_only=True)
    plain.load_textual_inversion(str(result.output_dir), weight_name="<comp1>.bin", local_files_only=True)
    without_kv = np.stack(sample_images(plain, prompts, seeds, n_per_prompt=2, **SAMPLE))
    assert np.abs(without_kv - in_memory).max() > 1e-3


def test_sample_does_not_depend_on_its_batch(trained):
    pipe = trained[0].pipeline
    together = sample_images(pipe, ["a <new1>", "a <new2>"], [5, 9], n_per_prompt=2, batch_size=4, **SAMPLE)
    alone = sample_images(pipe, ["a <new2>"], [10], n_per_prompt=1, batch_size=1, **SAMPLE)
    np.testing.assert_allclose(alone[0], together[3], rtol=0, atol=1e-5)  # "a <new2>", seed 9 + 1
    assert np.abs(together[0] - together[1]).max() > 1e-3  # different seeds, different images
    pil = sample_images(pipe, ["a <new1>"], [5], steps=2, guidance=3.0, resolution=64)
    assert pil[0].size == (64, 64) and pil[0].mode == "RGB"


def test_training_log_loss_curve_and_weight_files(trained):
    result, calls = trained
    rows = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(isinstance(r["loss"], float) and math.isfinite(r["loss"]) for r in rows)
    assert all(r["seconds_per_step"] > 0 for r in rows)
    assert [r["loss"] for r in rows] == result.losses
    assert [c[0] for c in calls] == list(range(1, STEPS + 1)) and [c[1] for c in calls] == result.losses
    assert max(result.seconds_per_step) < 5  # tiny model: well under a second a step, with slack for load
    with Image.open(result.loss_curve_path) as curve:
        assert curve.format == "PNG" and curve.width > 100
    assert result.weights_path == result.output_dir / WEIGHTS_NAME and result.weights_path.stat().st_size > 0
    for token in TOKENS:
        saved = torch.load(result.output_dir / f"{token}.bin", weights_only=True)
        assert list(saved) == [token] and saved[token].shape == (32,)
        assert (result.output_dir / f"{token}.bin").stat().st_size < 10_000  # the row, not the whole matrix
    assert not [p.name for p in result.output_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_training_is_deterministic(base, examples, workdir):
    first, _ = _train(base, examples, workdir / "again-1", max_train_steps=3)
    second, _ = _train(base, examples, workdir / "again-2", max_train_steps=3)
    assert first.losses == second.losses
    a = torch.load(first.weights_path, weights_only=True)
    b = torch.load(second.weights_path, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
