"""Where the LLM half of VLM-3R runs: in this process (``local``) or on a serving engine (``openai``).

The per-frame half (CUT3R, SigLIP, fusion, projector, pooling) always runs next to the camera.
Per question, the chosen frames' tokens are laid out with the newline token and spliced into
the embedded prompt (:meth:`Vlm3rModel.prompt_embeds`): an (L, H) tensor that is everything
the LLM needs. Then:

* ``local`` (:class:`LocalLlm`): the in-process Qwen2 decodes greedily (today's behaviour).
* ``openai`` (:class:`OpenAiLlm`): the tensor goes to an OpenAI-compatible completions server
  that accepts ``prompt_embeds`` (vLLM's ``--enable-prompt-embeds``):
  ``POST {url}/completions`` with ``"prompt_embeds": base64(torch.save(tensor))``,
  ``temperature 0`` and our stop ids; the server answers with the generated token ids. The
  robot then needs only the LLM's input embedding table (:func:`strip_llm_layers`), never its
  layers or LM head; one server batches the questions of many robots.

Requests are blocking calls made from the question's own thread (the node's query threads,
never its image worker), so a slow or dead server delays only that question: ingestion goes
on. Each question has a deadline (``timeout_s``); connection failures and 5xx answers are
retried with exponential back-off (``retries``, ``backoff_s``) inside it. Failures are
:class:`LlmBackendError` with a stable code:

* ``LLM_UNAVAILABLE``: the server could not be reached, or kept answering 5xx;
* ``LLM_TIMEOUT``: no answer before the deadline;
* ``LLM_REJECTED``: the server refused the request (4xx: wrong model name, prompt too long);
* ``LLM_BAD_RESPONSE``: an answer without the token ids.

Nothing is lost on a failure: the frames stay in the engine's window, so the same question
can be asked again. HTTP is requests (pinned in requirements.txt), one keep-alive session
per calling thread (a requests.Session is not meant to be shared between threads).
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import requests
import torch
import torch.nn as nn

from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rGeneration, Vlm3rModel

LLM_BACKENDS = ("local", "openai")
RETRYABLE_STATUS = (502, 503, 504)  # a restarting server or a proxy without one behind it


class LlmBackendError(Exception):
    """A question the LLM backend could not answer: ``code`` is stable, ``message`` a sentence."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ------------------------------------------------------------------------------- local
class LocalLlm:
    """The in-process Qwen2 of the :class:`Vlm3rModel` (greedy decoding with its KV cache)."""

    name = "local"

    def generate(self, vlm: Vlm3rModel, input_ids, pooled_frames: torch.Tensor, *, max_new_tokens: int,
                 stop_token_ids: tuple[int, ...] = ()) -> Vlm3rGeneration:
        if isinstance(vlm.llm, InputEmbeddingsOnly):
            raise LlmBackendError("LLM_NOT_LOADED", "this model was loaded without its LLM layers (llm_backend "
                                                    "openai); answer with an OpenAiLlm")
        return vlm.generate(input_ids, pooled_frames, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------- the robot's LLM part
class _EmbeddingsHolder(nn.Module):
    def __init__(self, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens


class InputEmbeddingsOnly(nn.Module):
    """What a robot keeps of the Qwen2 LLM with llm_backend ``openai``: the input embedding
    table under the same key (``model.embed_tokens.weight``), so checkpoints load unchanged."""

    def __init__(self, embed_tokens: nn.Embedding, config):
        super().__init__()
        self.model = _EmbeddingsHolder(embed_tokens)
        self.config = config

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def forward(self, *args, **kwargs):
        raise RuntimeError("the LLM layers are not loaded here (llm_backend openai): the server runs them")


LLM_LAYER_PREFIXES = ("llm.model.layers.", "llm.model.norm.", "llm.lm_head.")


def strip_llm_layers(vlm: Vlm3rModel) -> Vlm3rModel:
    """Drop the LLM's decoder layers, final norm and LM head, keeping its input embeddings (in place)."""
    if not isinstance(vlm.llm, InputEmbeddingsOnly):
        vlm.llm = InputEmbeddingsOnly(vlm.llm.get_input_embeddings(), vlm.llm.config)
    return vlm


def is_llm_layer_key(key: str) -> bool:
    """True for our state-dict keys of the parts :func:`strip_llm_layers` drops."""
    return key.startswith(LLM_LAYER_PREFIXES)


# ------------------------------------------------------------------------------ openai
@dataclass(frozen=True)
class OpenAiSettings:
    """An OpenAI-compatible completions server that accepts ``prompt_embeds`` (vLLM)."""

    url: str  # base URL up to /v1, e.g. http://10.0.0.5:8000/v1
    model: str  # the served model name (vllm serve --served-model-name, or its path)
    timeout_s: float = 60.0  # per question, retries included
    retries: int = 2  # further tries after a connection failure or a 5xx answer
    backoff_s: float = 0.5  # wait before retry n: backoff_s * 2**(n-1)
    api_key: str = ""  # sent as "Authorization: Bearer ..." when set (vllm serve --api-key)

    def validate(self) -> "OpenAiSettings":
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"the LLM server URL must be http(s)://HOST:PORT/v1, got {self.url!r}")
        if not self.model.strip():
            raise ValueError("the LLM server's model name is empty: give the name it serves (vllm serve "
                             "--served-model-name, or the model path it was started with)")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"the LLM timeout must be > 0 seconds, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"the LLM retries must be >= 0, got {self.retries}")
        if not (math.isfinite(self.backoff_s) and self.backoff_s >= 0):
            raise ValueError(f"the LLM back-off must be >= 0 seconds, got {self.backoff_s}")
        return self


def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """base64 of ``torch.save`` of a contiguous CPU (L, H) tensor: vLLM's ``prompt_embeds`` format
    (it loads it with ``torch.load(weights_only=True)``: plain tensors only, no pickled code)."""
    if embeds.ndim != 2:
        raise ValueError(f"prompt embeddings must be (L, H), got {tuple(embeds.shape)}")
    buf = io.BytesIO()
    torch.save(embeds.detach().to("cpu").contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def prompt_payload_bytes(tokens: int, hidden: int, dtype: torch.dtype) -> int:
    """Raw size of one question's embeddings (before base64, which adds a third)."""
    return tokens * hidden * torch.empty((), dtype=dtype).element_size()


class OpenAiLlm:
    """The LLM half on an OpenAI-compatible server (vLLM). Thread-safe: one connection pool."""

    name = "openai"

    def __init__(self, settings: OpenAiSettings):
        self.settings = settings.validate()
        self._base = settings.url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self._local = threading.local()  # one requests.Session per thread
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.retried = 0

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self._headers)
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def request_body(self, embeds: torch.Tensor, max_new_tokens: int, stop_token_ids: tuple[int, ...]) -> dict:
        return {
            "model": self.settings.model,
            "prompt_embeds": encode_prompt_embeds(embeds),
            "max_tokens": int(max_new_tokens),
            "temperature": 0.0,  # greedy, as the official evaluation
            "n": 1,
            # Stop exactly where the local loop stops (our stop ids, not the server's own EOS list).
            "stop_token_ids": [int(i) for i in stop_token_ids],
            "ignore_eos": True,
            "return_token_ids": True,
        }

    def generate(self, vlm: Vlm3rModel, input_ids, pooled_frames: torch.Tensor, *, max_new_tokens: int,
                 stop_token_ids: tuple[int, ...] = ()) -> Vlm3rGeneration:
        embeds, visual_tokens = vlm.prompt_embeds(input_ids, pooled_frames, max_new_tokens)
        doc = self.post("/completions", self.request_body(embeds, max_new_tokens, stop_token_ids))
        ids, finish = self.read_token_ids(doc)
        stopped = bool(ids) and ids[-1] in stop_token_ids
        if stopped:
            ids = ids[:-1]  # the local loop never returns its stop token
        stopped = stopped or (finish == "stop" and len(ids) < max_new_tokens)
        return Vlm3rGeneration(ids, embeds.shape[0], visual_tokens, stopped)

    def read_token_ids(self, doc) -> tuple[list[int], str]:
        try:
            choice = doc["choices"][0]
            ids = [int(i) for i in choice["token_ids"]]
            return ids, str(choice.get("finish_reason") or "")
        except (KeyError, IndexError, TypeError, ValueError):
            raise LlmBackendError("LLM_BAD_RESPONSE", f"the LLM server at {self.settings.url} answered without "
                                                      f"choices[0].token_ids (is it vLLM >= 0.10.2, which "
                                                      f"returns them with return_token_ids?): "
                                                      f"{str(doc)[:300]}") from None

    def post(self, path: str, body: dict) -> dict:
        """POST with the question's deadline, retrying connection failures and 5xx with back-off."""
        s = self.settings
        deadline = time.monotonic() + s.timeout_s
        last = ""
        for attempt in range(s.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
                pause = s.backoff_s * 2 ** (attempt - 1)
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._lock:
                self.requests += 1
            try:
                # (connect, read) timeouts: vLLM sends nothing before the answer is complete, so the
                # read timeout bounds the whole wait
                response = self._session().post(self._base + path, json=body, timeout=(min(left, 5.0), left))
            except requests.ConnectTimeout as exc:
                last = f"ConnectTimeout: {_first_line(exc)}"
                continue
            except requests.Timeout:
                raise LlmBackendError("LLM_TIMEOUT", f"the LLM server at {s.url} did not answer within "
                                                     f"{s.timeout_s:g} s (llm_timeout); the frames are kept, ask "
                                                     f"again or raise the timeout") from None
            except requests.RequestException as exc:  # refused, reset, DNS: the server is not there (yet)
                last = f"{type(exc).__name__}: {_first_line(exc)}"
                continue
            if response.status_code in RETRYABLE_STATUS or response.status_code >= 500:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise LlmBackendError("LLM_REJECTED", f"the LLM server at {s.url} refused the request (HTTP "
                                                      f"{response.status_code}: {_error_text(response)}); check "
                                                      f"the model name {s.model!r} and the server's "
                                                      f"--enable-prompt-embeds / --max-model-len")
            try:
                return response.json()
            except ValueError:
                raise LlmBackendError("LLM_BAD_RESPONSE", f"the LLM server at {s.url} answered with no JSON: "
                                                          f"{response.text[:200]!r}") from None
        if time.monotonic() >= deadline and not last:
            raise LlmBackendError("LLM_TIMEOUT", f"no answer from the LLM server at {s.url} within "
                                                 f"{s.timeout_s:g} s (llm_timeout)")
        raise LlmBackendError("LLM_UNAVAILABLE", f"cannot reach the LLM server at {s.url} ({last}; "
                                                 f"{attempt + 1} tries); is it running? The frames are kept: ask "
                                                 f"again when it is back")

    def server_models(self) -> list[str]:
        """The model names the server serves (GET /models); LlmBackendError when it cannot be asked."""
        try:
            response = self._session().get(self._base + "/models", timeout=min(self.settings.timeout_s, 10.0))
            response.raise_for_status()
            return [m["id"] for m in response.json()["data"]]
        except (requests.RequestException, KeyError, TypeError, ValueError) as exc:
            raise LlmBackendError("LLM_UNAVAILABLE", f"cannot list the models of the LLM server at "
                                                     f"{self.settings.url}: {type(exc).__name__}: {exc}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


def _error_text(response: requests.Response) -> str:
    try:
        doc = response.json()
        return str(doc.get("error", {}).get("message") or doc.get("message") or doc)[:300]
    except ValueError:
        return response.text[:300]


def make_llm(backend: str, settings: OpenAiSettings | None = None):
    """The backend named ``backend`` ("local" or "openai" with ``settings``)."""
    if backend == "local":
        return LocalLlm()
    if backend == "openai":
        if settings is None:
            raise ValueError("llm_backend openai needs the server's URL and model name")
        return OpenAiLlm(settings)
    raise ValueError(f"llm_backend must be one of {', '.join(LLM_BACKENDS)}, got {backend!r}")
