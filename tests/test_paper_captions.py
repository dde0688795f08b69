"""Recaptioning with a vision-language model: transformers (tiny LLaVA) and an OpenAI-compatible endpoint."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from gen4gen.captions import CaptionObject
from gen4gen.config import PROJECT_ROOT, CaptionConfig
from gen4gen.models.common import MissingWeightsError
from gen4gen.models.openai_compat import ChatError

from . import paper_models
from .openai_stub import StubServer

OBJECTS = [CaptionObject("red_ball", "ball", "<new1>", (10, 20, 60, 90)),
           CaptionObject("blue_box", "box", "<new2>", (70, 30, 120, 100))]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path)
    return path


def test_transformers_vlm_captions_deterministically(tmp_path_factory, image_file):
    from gen4gen.models.vlm_caption import TransformersCaptioner

    folder = paper_models.llava(tmp_path_factory.getbasetemp() / "paper_models")
    config = CaptionConfig(backend="vlm", vlm_model=str(folder), device="cpu", dtype="fp32", max_new_tokens=12)
    captioner = TransformersCaptioner(config, PROJECT_ROOT).load()
    first = captioner.describe(image_file, OBJECTS, "a sunny lawn", 128)
    assert isinstance(first, str) and first.strip() == first and first  # random weights: text, not sense
    assert captioner.describe(image_file, OBJECTS, "a sunny lawn", 128) == first  # greedy decoding
    assert captioner.identity() == {"backend": "vlm", "model": str(folder), "device": "cpu", "dtype": "float32"}
    with pytest.raises(MissingWeightsError, match="vision-language model"):
        TransformersCaptioner(config.model_copy(update={"vlm_model": str(image_file.parent / "none")}),
                              PROJECT_ROOT).load()


def test_vision_endpoint_gets_the_image_and_the_prompt(image_file):
    from gen4gen.models.vlm_caption import EndpointCaptioner

    replies = ["  A red ball and a blue box\n on a lawn. "]
    with StubServer(lambda body: replies[0]) as server:
        config = CaptionConfig(backend="vlm_api", endpoint={"base_url": server.base_url, "model": "vision-stub",
                                                           "api_key_env": ""})
        captioner = EndpointCaptioner(config)
        assert captioner.describe(image_file, OBJECTS, "a sunny lawn", 128) == "A red ball and a blue box on a lawn."
        body = server.requests[-1]["body"]
        text, picture = body["messages"][0]["content"]
        assert "a ball and a box in a sunny lawn" in text["text"] and body["model"] == "vision-stub"
        assert "Authorization" not in server.requests[-1]["headers"]  # no key configured
        url = picture["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert np.array_equal(np.asarray(sent), np.asarray(Image.open(image_file)))
        replies[0] = "   "
        with pytest.raises(ChatError, match="failed 3 times: empty caption"):
            captioner.describe(image_file, OBJECTS, "a sunny lawn", 128)
