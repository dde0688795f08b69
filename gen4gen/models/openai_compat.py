"""A minimal client for OpenAI-compatible chat endpoints (OpenAI, vLLM, Ollama, llama.cpp server).

Standard library only (urllib). The API key comes from the configuration or an environment
variable and goes into the ``Authorization`` header only: it is not kept in any attribute
that is printed, in error messages, or in anything written to disk.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from gen4gen.config import EndpointConfig


class ChatError(RuntimeError):
    """The endpoint could not be reached or answered with an error (never contains the key)."""


@dataclass
class ChatReply:
    content: str
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)
    seconds: float = 0.0


class ChatClient:
    def __init__(self, endpoint: EndpointConfig):
        self.base_url = endpoint.base_url.rstrip("/")
        self.model = endpoint.model
        self.timeout = endpoint.timeout_s
        self.temperature = endpoint.temperature
        self.max_tokens = endpoint.max_tokens
        self._endpoint = endpoint

    def __repr__(self) -> str:  # no key here, ever
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r})"

    def _key(self) -> str | None:
        if self._endpoint.api_key is not None:
            return self._endpoint.api_key.get_secret_value() or None
        if not self._endpoint.api_key_env:
            return None
        return os.environ.get(self._endpoint.api_key_env) or None

    def describe(self) -> dict:
        """What may be recorded about the endpoint: URL and model (not the key)."""
        return {"base_url": self.base_url, "model": self.model}

    def chat(self, messages: list[dict], *, json_mode: bool = False, seed: int | None = None,
             max_tokens: int | None = None, temperature: float | None = None) -> ChatReply:
        body = {"model": self.model, "messages": messages,
                "temperature": self.temperature if temperature is None else temperature,
                "max_tokens": max_tokens or self.max_tokens}
        if seed is not None:
            body["seed"] = int(seed) % (2**31)  # some servers take 32-bit seeds only
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode("utf-8"),
                                         headers=headers, method="POST")
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(600).decode("utf-8", "replace").strip() if exc.fp else ""
            raise ChatError(f"{self.base_url}: HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ChatError(f"{self.base_url}: cannot reach the endpoint ({reason})") from None
        seconds = time.perf_counter() - start
        try:
            data = json.loads(payload)
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ChatError(f"{self.base_url}: the response is not an OpenAI chat completion: "
                            f"{payload[:300].decode('utf-8', 'replace')!r}") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return ChatReply(str(content), choice.get("finish_reason"), data.get("usage") or {}, seconds)
