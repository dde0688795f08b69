"""Image retelling with a vision-language model (the paper recaptions with LLaVA-1.5).

Two backends with the captioner interface (``describe``, ``name``):
- ``vlm``: any image-text-to-text model through transformers (``AutoProcessor`` +
  ``AutoModelForImageTextToText``), greedy decoding, so the caption is deterministic;
- ``vlm_api``: an OpenAI-compatible vision chat endpoint (image sent as a PNG data URL).
The prompt names the objects and the background the layout put there (``caption.vlm_prompt``);
the training-prompt strategies are unchanged (``gen4gen.captions.prompt_strategies``).
"""
from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

from gen4gen.captions import CaptionObject, count_phrase, retell
from gen4gen.config import CaptionConfig

from .common import WeightSpec, dtype_name, load_source, require, resolve_device, resolve_dtype
from .openai_compat import ChatClient, ChatError

# LLaVA-1.5's conversation format, for processors that ship no chat template.
LLAVA_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"
ENDPOINT_ATTEMPTS = 3

_CACHE: dict[tuple, tuple] = {}
_LOCK = threading.Lock()


def weight_specs(config: CaptionConfig) -> list[WeightSpec]:
    if config.backend != "vlm":
        return []
    return [WeightSpec("caption", "vision-language model", config.vlm_model, required=("config.json",),
                       config_key="caption.vlm_model")]


def caption_prompt(config: CaptionConfig, objects: list[CaptionObject], background: str) -> str:
    return config.vlm_prompt.format(objects=count_phrase([o.class_name for o in objects]), background=background)


def _clean(text: str) -> str:
    """One line of printable text (control characters dropped, whitespace collapsed)."""
    import unicodedata

    return " ".join("".join(c for c in text if c.isspace() or unicodedata.category(c) != "Cc").split())


class TransformersCaptioner:
    """The paper profile's :class:`~gen4gen.backends.Captioner`: a local image-text-to-text model."""

    name = "vlm"

    def __init__(self, config: CaptionConfig, project_root: Path):
        self.config = config
        self.project_root = Path(project_root)
        self._loaded = None  # (processor, model, device, dtype, source)

    def load(self) -> "TransformersCaptioner":
        if self._loaded is not None:
            return self
        (located,) = require(weight_specs(self.config), self.project_root)
        device = resolve_device(self.config.device)
        dtype, _ = resolve_dtype(self.config.dtype, device)
        source, kwargs = load_source(located)
        key = (source, str(device), str(dtype))
        with _LOCK:
            if key not in _CACHE:
                import transformers
                from transformers import AutoModelForImageTextToText, AutoProcessor

                transformers.utils.logging.set_verbosity_error()
                processor = AutoProcessor.from_pretrained(source, **kwargs)
                model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **kwargs)
                model = model.to(device).eval().requires_grad_(False)
                _CACHE[key] = (processor, model, device, dtype, located.hub_id or str(located.path))
            self._loaded = _CACHE[key]
        return self

    def close(self) -> None:
        """Drop this captioner's hold on the model (the per-process cache keeps it for the next step)."""
        self._loaded = None

    def identity(self) -> dict:
        self.load()
        _, _, device, dtype, source = self._loaded
        return {"backend": self.name, "model": source, "device": str(device), "dtype": dtype_name(dtype)}

    def describe(self, image, objects: list[CaptionObject], background: str, canvas: int) -> str:
        import torch
        from PIL import Image

        self.load()
        processor, model, device, dtype, _ = self._loaded
        prompt = caption_prompt(self.config, objects, background)
        picture = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else image
        if getattr(processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True)
        else:
            text = LLAVA_FORMAT.format(prompt=prompt)
        inputs = processor(images=picture, text=text, return_tensors="pt")
        inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) for k, v in inputs.items()}
        tokenizer = getattr(processor, "tokenizer", processor)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False,
                                 pad_token_id=getattr(tokenizer, "pad_token_id", None))
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        caption = _clean(processor.batch_decode(new_tokens, skip_special_tokens=True)[0])
        # An empty answer is no caption: keep the layout retelling rather than an empty string.
        return caption or retell(objects, background, canvas)


class EndpointCaptioner:
    """A :class:`~gen4gen.backends.Captioner` over an OpenAI-compatible vision endpoint."""

    name = "vlm_api"

    def __init__(self, config: CaptionConfig, client: ChatClient | None = None):
        self.config = config
        self.client = client or ChatClient(config.endpoint)

    def identity(self) -> dict:
        return {"backend": self.name, **self.client.describe()}

    def close(self) -> None:
        """Nothing to release: the model runs behind the endpoint."""

    def describe(self, image, objects: list[CaptionObject], background: str, canvas: int) -> str:
        from PIL import Image

        picture = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else image
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        messages = [{"role": "user", "content": [
            {"type": "text", "text": caption_prompt(self.config, objects, background)},
            {"type": "image_url", "image_url": {"url": url}}]}]
        errors = []
        for _ in range(ENDPOINT_ATTEMPTS):
            try:
                reply = self.client.chat(messages, max_tokens=self.config.max_new_tokens, temperature=0.0)
            except ChatError as exc:
                errors.append(str(exc))
                continue
            caption = _clean(reply.content)
            if caption:
                return caption
            errors.append("empty caption")
        raise ChatError(f"captioning endpoint failed {ENDPOINT_ATTEMPTS} times: {'; '.join(errors)}")
