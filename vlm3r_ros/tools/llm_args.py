"""``--llm-backend`` and the LLM-server options, shared by vlm3r-ask, vlm3r-eval and vlm3r-sim-eval.

``local`` (the default) runs the LLM in this process; ``openai`` sends each question's prompt
embeddings to an OpenAI-compatible server that accepts ``prompt_embeds`` (vLLM; see
docs/llm_serving.md) and loads no LLM layers here.
"""

from __future__ import annotations

import argparse

from vlm3r_ros.engine.llm_backend import LLM_BACKENDS, OpenAiLlm, OpenAiSettings
from vlm3r_ros.errors import UserError

DEFAULT_LLM_URL = "http://127.0.0.1:8000/v1"


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LLM backend (where the LLM half runs)")
    group.add_argument("--llm-backend", choices=LLM_BACKENDS, default="local",
                       help="local: in this process (default); openai: an OpenAI-compatible server with prompt "
                            "embeddings (vLLM --enable-prompt-embeds), no LLM layers loaded here")
    group.add_argument("--llm-url", default=DEFAULT_LLM_URL,
                       help=f"the server's base URL, up to /v1 (default {DEFAULT_LLM_URL})")
    group.add_argument("--llm-model", help="the model name the server serves (required with --llm-backend openai)")
    group.add_argument("--llm-timeout", type=float, default=120.0,
                       help="seconds per question, retries included (default 120)")
    group.add_argument("--llm-retries", type=int, default=2,
                       help="retries after a connection failure or a 5xx answer (default 2)")
    group.add_argument("--llm-api-key", default="", help="sent as a Bearer token (vllm serve --api-key)")


def node_llm_parameters(args) -> list[str]:
    """``-p name:=value`` ROS arguments that put a vlm3r-node on the server of ``--llm-backend openai``
    ([] for local: the params file decides). The API key goes through VLM3R_LLM_API_KEY, not argv."""
    settings = openai_settings(args)
    if settings is None:
        return []
    values = {"llm_backend": "openai", "llm_url": settings.url, "llm_model": settings.model,
              "llm_timeout": float(settings.timeout_s), "llm_retries": settings.retries}
    return [a for name, value in values.items() for a in ("-p", f"{name}:={value}")]


def openai_settings(args) -> OpenAiSettings | None:
    """The server settings for ``--llm-backend openai`` (None for local); ValueError with the reason."""
    if getattr(args, "llm_backend", "local") != "openai":
        return None
    if not args.llm_model:
        raise ValueError("--llm-backend openai needs --llm-model (the name the server serves)")
    return OpenAiSettings(url=args.llm_url, model=args.llm_model, timeout_s=args.llm_timeout,
                          retries=args.llm_retries, api_key=args.llm_api_key).validate()


def tool_llm(args) -> OpenAiLlm | None:
    """The ``--llm-backend openai`` client (None for local); UserError for bad server options.

    getattr: callers may pass an argparse.Namespace built without the options."""
    try:
        settings = openai_settings(args)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return OpenAiLlm(settings) if settings is not None else None
