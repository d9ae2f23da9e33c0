"""What a model server says about its context window: the answers of its probes, and the window an
overflow error states. Pure: the HTTP is the providers' (openai_compatible.py).

- vLLM: `GET /v1/models` lists `max_model_len` per model.
- llama.cpp's server: `GET /props` has `default_generation_settings.n_ctx` (older builds: `n_ctx`).
- Ollama: `POST /api/show {"model"}` has the trained `<arch>.context_length` in `model_info`, but
  serves the OpenAI API with its `num_ctx` (a Modelfile PARAMETER, else its default).
- llama-cpp-python's server says nothing of it: its overflow errors do ("maximum context length is
  2048 tokens"), and so do vLLM's and llama.cpp's (`n_ctx`).

Tokenizers, for the ratio of tokens to characters (`chat/context.py`): vLLM's `POST /tokenize`
(`count`, beside `max_model_len`), llama.cpp's `POST /tokenize` (`tokens`), llama-cpp-python's
`POST /extras/tokenize/count` (`count`). Ollama has none.

Imports: standard library only.
"""

from __future__ import annotations

import re
from typing import Any

# Ollama's context when no Modelfile sets num_ctx: 4096 in recent versions, 2048 in older ones;
# the version is unknown here, so plan for the lower.
OLLAMA_DEFAULT_NUM_CTX = 2048

_STATED = (
    re.compile(r"maximum context length is (\d+)"),  # vLLM, llama-cpp-python, OpenAI
    re.compile(r"context size \((\d+) tokens\)"),  # llama.cpp
    re.compile(r"context window of (\d+)"),
    re.compile(r"maximum context length \((\d+)\)"),  # vLLM's input-length form
)


def _positive(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None


def window_from_models(body: Any, model: str) -> int | None:
    """vLLM's `/v1/models`: the model's `max_model_len` (the only model's, if the id differs)."""
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return None
    models = [e for e in entries if isinstance(e, dict)]
    chosen = [e for e in models if e.get("id") == model] or (models if len(models) == 1 else [])
    return _positive(chosen[0].get("max_model_len")) if chosen else None


def window_from_props(body: Any) -> int | None:
    """llama.cpp's `/props`."""
    if not isinstance(body, dict):
        return None
    settings = body.get("default_generation_settings")
    if isinstance(settings, dict) and _positive(settings.get("n_ctx")):
        return _positive(settings.get("n_ctx"))
    return _positive(body.get("n_ctx"))


def window_from_ollama(body: Any) -> int | None:
    """Ollama's `/api/show`: the `num_ctx` it serves with, never more than the trained length."""
    if not isinstance(body, dict):
        return None
    trained = None
    info = body.get("model_info")
    if isinstance(info, dict):
        trained = next((_positive(v) for k, v in info.items() if k.endswith(".context_length") and _positive(v)), None)
    num_ctx = None
    parameters = body.get("parameters")
    if isinstance(parameters, str):
        match = re.search(r"^\s*num_ctx\s+(\d+)", parameters, re.MULTILINE)
        num_ctx = int(match.group(1)) if match else None
    if trained is None and num_ctx is None:
        return None
    serving = num_ctx or OLLAMA_DEFAULT_NUM_CTX
    return min(serving, trained) if trained is not None else serving


def count_from_vllm(body: Any) -> int | None:
    """vLLM's `POST /tokenize {"model", "prompt"}`: `count`."""
    return _positive(body.get("count")) if isinstance(body, dict) and "max_model_len" in body else None


def count_from_llama_cpp(body: Any) -> int | None:
    """llama.cpp's `POST /tokenize {"content"}`: the `tokens` list."""
    tokens = body.get("tokens") if isinstance(body, dict) else None
    return _positive(len(tokens)) if isinstance(tokens, list) else None


def count_from_llama_cpp_python(body: Any) -> int | None:
    """llama-cpp-python's `POST /extras/tokenize/count {"input"}`: `count`."""
    return _positive(body.get("count")) if isinstance(body, dict) else None


def stated_window(body: object) -> int | None:
    """The window an overflow error names (`n_ctx`, or a number in its message), if any."""
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        if _positive(err.get("n_ctx")):
            return _positive(err.get("n_ctx"))
        err = err.get("message")
    text = str(err) if err is not None else ""
    for pattern in _STATED:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None
