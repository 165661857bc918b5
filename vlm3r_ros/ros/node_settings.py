"""The parameters of ``vlm3r-node`` (declared, documented, validated) and the engine they build.

:data:`PARAMETERS` is the node's parameter table as data (one :class:`~vlm3r_ros.ros.params.ParamSpec`
each: default, description, limits); :func:`check_parameter` validates what the descriptors
cannot; :class:`NodeSettings` holds the read-only ones, read once at configure; and
:func:`build_engine` loads the models they name into a :class:`SpatialEngine`, raising
:class:`ConfigError` with a sentence naming the parameter for anything the user must fix.
Apart from the node (:mod:`vlm3r_ros.ros.node`), the demo, the benchmarks and the tests read the
table and build engines from it without starting a node.
"""

from __future__ import annotations

import os
import pathlib
import re
from dataclasses import dataclass

import torch

from vlm3r_ros.engine.devices import resolve_device
from vlm3r_ros.engine.loading import LoadError, ModelSource, load_models, resolve_dtype
from vlm3r_ros.engine.spatial_engine import EngineConfig, SpatialEngine
from vlm3r_ros.models.vlm.config import Vlm3rConfigError, parse_config_overrides
from vlm3r_ros.ros import image_qos
from vlm3r_ros.ros.params import ParamSpec, frame_id_problem

NODE_NAME = "vlm3r_node"

# ---------------------------------------------------------------------------------- parameters
_ENGINE_DEFAULTS = EngineConfig()

PARAMETERS: tuple[ParamSpec, ...] = (
    # -- input
    ParamSpec("image_topic", "image", "sensor_msgs/Image topic to subscribe to (every encoding cv_bridge "
              "converts to rgb8: 8/16-bit RGB, BGR, RGBA, BGRA, mono, Bayer, yuyv/uyvy). Undistorted images "
              "(image_rect from image_proc) for a camera with lens distortion. Relative names follow the "
              "node's namespace.", constraints="a valid ROS topic name"),
    ParamSpec("compressed_image_topic", "", "Optional sensor_msgs/CompressedImage topic (jpeg or png), e.g. "
              "'image/compressed'. Empty: no compressed subscription.",
              constraints="empty or a valid ROS topic name"),
    ParamSpec("image_qos_reliability", "auto", "Reliability of the camera subscription: auto (the default: "
              "reliable when every publisher of the topic is, sensor-data QoS otherwise or while none is up; "
              "re-chosen when the publishers change), reliable or best_effort.", choices=image_qos.CHOICES),
    ParamSpec("image_qos_depth", 5, "History depth of the camera subscription (keep last N).",
              int_range=(1, 100)),
    ParamSpec("max_image_pixels", 4096 * 4096, "Largest input image accepted (width * height); larger ones "
              "are rejected and counted.", int_range=(1, 8192 * 8192)),
    # -- model
    ParamSpec("model_source", "files", "Where the weights come from: 'files' (the local paths below) or "
              "'tiny_random' (tiny seeded random models: tests pipelines, answers mean nothing).",
              choices=("files", "tiny_random")),
    ParamSpec("cut3r_weights", "", "CUT3R checkpoint file (cut3r_512_dpt_4_64.pth or a .safetensors from "
              "vlm3r-convert-cut3r). Required with model_source 'files'."),
    ParamSpec("vlm_base_dir", "", "Folder of the LLaVA-Video-Qwen2 base model (config.json, weights, "
              "tokenizer). Required with model_source 'files'."),
    ParamSpec("vlm_adapter_dir", "", "Folder of the VLM-3R LoRA adapter (adapter_config.json, "
              "adapter_model.*, non_lora_trainables.bin). Required with model_source 'files'."),
    ParamSpec("vlm_config_overrides", "", "VLM-3R config fields over what the checkpoint's config.json "
              "says, as a JSON object, e.g. '{\"fusion_num_heads\": 16, \"vision\": {\"hidden_size\": 1024}}' "
              "(the SigLIP and fusion sizes are not in a LLaVA config.json: any model other than the released "
              "one needs them). Empty: none. model_source 'files' only.",
              constraints="empty or a JSON object of Vlm3rConfig fields ('vision' / 'llm' take objects)"),
    ParamSpec("tokenizer_dir", "", "Folder holding the tokenizer. Empty: vlm_base_dir (files) or the "
              "offline-built Qwen2 tokenizer (tiny_random)."),
    ParamSpec("random_seed", 0, "Seed of the tiny random weights (model_source 'tiny_random').",
              int_range=(0, 2**31 - 1)),
    ParamSpec("device", "auto", "Torch device: 'auto' (cuda if available, else cpu), 'cpu', 'cuda' or "
              "'cuda:N'.", constraints="auto, cpu, cuda or cuda:N"),
    ParamSpec("dtype", "auto", "Weights and compute dtype: 'auto' (float16 on cuda, float32 on cpu), "
              "'float32', 'float16' or 'bfloat16'.", choices=("auto", "float32", "float16", "bfloat16")),
    ParamSpec("torch_threads", 0, "CPU threads for torch (torch.set_num_threads) in this process; 0 keeps "
              "torch's default.", int_range=(0, 256)),
    # -- where the LLM half runs (engine/llm_backend.py, docs/llm_serving.md)
    ParamSpec("llm_backend", "local", "'local': the LLM runs in this process; 'openai': questions go as prompt "
              "embeddings to an OpenAI-compatible server (vLLM --enable-prompt-embeds) at llm_url, and no LLM "
              "layers are loaded here. The API key, if any, comes from the VLM3R_LLM_API_KEY environment "
              "variable.", choices=("local", "openai")),
    ParamSpec("llm_url", "http://127.0.0.1:8000/v1", "Base URL of the LLM server, up to /v1 (llm_backend "
              "'openai').", constraints="http(s)://HOST:PORT/v1"),
    ParamSpec("llm_model", "", "Model name the LLM server serves (vllm serve --served-model-name). Required "
              "with llm_backend 'openai'."),
    ParamSpec("llm_timeout", 60.0, "Seconds a question may wait for the LLM server, retries included; then it "
              "fails with LLM_TIMEOUT (the frames are kept).", float_range=(0.1, 3600.0)),
    ParamSpec("llm_retries", 2, "Retries after a connection failure or a 5xx answer of the LLM server, with "
              "exponential back-off; then the question fails with LLM_UNAVAILABLE.", int_range=(0, 100)),
    ParamSpec("llm_backoff", 0.5, "Seconds before the first retry; doubled for each further one.",
              float_range=(0.0, 60.0)),
    ParamSpec("geometry", True, "Run CUT3R's geometry: the camera pose on every frame (~/pose, ~/path, state "
              "camera_pose) and the world points (~/points) on the frames whose points are published (see "
              "points_period). Off: tokens only."),
    # -- memory window (SpatialEngine)
    ParamSpec("window_capacity", _ENGINE_DEFAULTS.window_capacity, "Most frames kept in the memory window "
              "that questions read; the oldest are forgotten first.", int_range=(1, 100_000)),
    ParamSpec("keyframe_stride", _ENGINE_DEFAULTS.keyframe_stride, "Keep every k-th processed frame in the "
              "window (every frame still updates CUT3R's state).", int_range=(1, 10_000)),
    ParamSpec("default_max_frames", _ENGINE_DEFAULTS.default_max_frames, "Frames per question when a "
              "request says max_frames 0 (VLM-3R was trained with 32).", int_range=(1, 100_000),
              constraints="<= window_capacity"),
    ParamSpec("default_max_new_tokens", _ENGINE_DEFAULTS.default_max_new_tokens, "Answer length limit in "
              "tokens when a request says max_new_tokens 0.", int_range=(1, 4096),
              constraints="<= max_new_tokens_limit"),
    ParamSpec("max_new_tokens_limit", _ENGINE_DEFAULTS.max_new_tokens_limit, "Largest max_new_tokens a "
              "request may ask for.", int_range=(1, 4096)),
    ParamSpec("max_question_chars", _ENGINE_DEFAULTS.max_question_chars, "Longest question accepted, in "
              "characters; longer ones get QUESTION_TOO_LONG.", int_range=(1, 1_000_000)),
    ParamSpec("auto_reset_frames", _ENGINE_DEFAULTS.auto_reset_frames, "Start a new segment after this "
              "many processed frames; 0 never.", int_range=(0, 2**31 - 1)),
    ParamSpec("max_concurrent_queries", _ENGINE_DEFAULTS.max_concurrent_queries, "Questions answered at "
              "the same time; more wait in the queue (query_queue_depth).", int_range=(1, 64)),
    ParamSpec("query_queue_depth", _ENGINE_DEFAULTS.query_queue_depth, "Questions that may wait (in arrival "
              "order) while max_concurrent_queries run; more are answered BUSY at once.", int_range=(0, 1000)),
    ParamSpec("query_queue_timeout", _ENGINE_DEFAULTS.query_queue_timeout, "Seconds a question may wait in "
              "the queue before it is answered QUEUE_TIMEOUT; 0 = no limit.", float_range=(0.0, 3600.0)),
    ParamSpec("prefix_cache_mb", _ENGINE_DEFAULTS.prefix_cache_mb, "Memory bound of the visual-prefix KV cache "
              "(the LLM state of the prompt up to the end of the chosen frames, reused by every question about "
              "the same frames), in MiB; 0 = off.", float_range=(0.0, 1_000_000.0)),
    ParamSpec("frame_selection", _ENGINE_DEFAULTS.frame_selection, "How a question picks its frames: "
              "'uniform' (the official even spread over the window) or 'keyframes' (every s-th frame of the "
              "segment, s doubling as needed: the cached prefix grows by appending; see docs/query.md).",
              choices=("uniform", "keyframes")),
    ParamSpec("prefix_prefetch", _ENGINE_DEFAULTS.prefix_prefetch, "With frame_selection 'keyframes': after "
              "each new keyframe, extend the cached prefix of a default question (default_max_frames, whole "
              "window) in the background while no question waits or runs, so the next question prefills only "
              "its own text. Costs LLM compute between questions."),
    # -- outputs
    ParamSpec("world_frame_id", "vlm3r_world", "Fixed frame of poses, path, points and state (REP 103 "
              "axes: x forward, y left, z up, as seen by the segment's first camera).", read_only=False,
              constraints="a tf2 frame id: not empty, not starting with '/'"),
    ParamSpec("path_max_length", 1000, "Most poses kept in ~/path (the oldest are dropped).",
              read_only=False, int_range=(1, 100_000)),
    ParamSpec("publish_points", True, "Publish ~/points (needs geometry and an engine that returns "
              "points).", read_only=False),
    ParamSpec("points_max", 5000, "Most points per ~/points cloud (regular decimation).", read_only=False,
              int_range=(1, 1_000_000)),
    ParamSpec("points_period", 0.0, "Least input-stamp seconds between two ~/points clouds; the dense points "
              "head runs only on those frames (the pose still goes out with every frame). 0: no time limit. "
              "E.g. 1.0 at 4 Hz input computes points on every 4th frame: a cheaper step, a cloud that lags "
              "the camera by up to a second.", read_only=False, float_range=(0.0, 3600.0)),
    ParamSpec("points_every_n_frames", 1, "Compute and publish ~/points on at most every n-th processed frame "
              "(with points_period, both must hold). 1: every frame.", read_only=False, int_range=(1, 100_000)),
    ParamSpec("state_period", 0.5, "Seconds between ~/state messages when no frame comes (one is also "
              "published after every processed frame).", float_range=(0.01, 60.0)),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", float_range=(0.1, 60.0)),
    ParamSpec("autostart", True, "Configure and activate at start (vlm3r-node); false leaves the node "
              "unconfigured for a lifecycle manager."),
)
PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
PARAMETER_SPECS = {p.name: p for p in PARAMETERS}

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_parameter(name: str, value) -> str | None:
    """Validation beyond type and range (those come from the descriptors). None when valid,
    else the reason, naming the parameter, the value and what is allowed."""
    spec = PARAMETER_SPECS.get(name)
    if spec is None:
        return None
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    if name == "device" and not _DEVICE_RE.match(value):
        return f"device must be auto, cpu, cuda or cuda:N; got {value!r}"
    if name == "vlm_config_overrides":
        try:
            parse_config_overrides(value)
        except Vlm3rConfigError as exc:
            return f"vlm_config_overrides: {exc}"
    if name == "llm_url" and not re.match(r"^https?://[^/\s]+", value):
        return f"llm_url must be http(s)://HOST:PORT/v1; got {value!r}"
    if name == "world_frame_id" and frame_id_problem(value):
        return f"world_frame_id must be a tf2 frame id: {frame_id_problem(value)}; got {value!r}"
    if name in ("image_topic", "compressed_image_topic") and (value or name == "image_topic"):
        from rclpy.exceptions import InvalidTopicNameException
        from rclpy.expand_topic_name import expand_topic_name
        from rclpy.validate_full_topic_name import validate_full_topic_name
        try:
            validate_full_topic_name(expand_topic_name(value, NODE_NAME, "/"))
        except (InvalidTopicNameException, ValueError) as exc:
            detail = str(exc).split(", at /")[0].splitlines()[0].rstrip(":")  # no rcl source location
            return f"{name} is not a valid topic name: {value!r} ({detail})"
    return None


@dataclass(frozen=True)
class NodeSettings:
    """The read-only parameters, read once at configure."""

    image_topic: str
    compressed_image_topic: str
    image_qos_reliability: str
    image_qos_depth: int
    max_image_pixels: int
    model_source: str
    cut3r_weights: str
    vlm_base_dir: str
    vlm_adapter_dir: str
    vlm_config_overrides: str
    tokenizer_dir: str
    random_seed: int
    device: str
    dtype: str
    torch_threads: int
    llm_backend: str
    llm_url: str
    llm_model: str
    llm_timeout: float
    llm_retries: int
    llm_backoff: float
    geometry: bool
    window_capacity: int
    keyframe_stride: int
    default_max_frames: int
    default_max_new_tokens: int
    max_new_tokens_limit: int
    max_question_chars: int
    auto_reset_frames: int
    max_concurrent_queries: int
    query_queue_depth: int
    query_queue_timeout: float
    prefix_cache_mb: float
    frame_selection: str
    prefix_prefetch: bool
    state_period: float
    diagnostics_period: float

    def engine_config(self) -> EngineConfig:
        config = EngineConfig(window_capacity=self.window_capacity, keyframe_stride=self.keyframe_stride,
                              default_max_frames=self.default_max_frames,
                              default_max_new_tokens=self.default_max_new_tokens,
                              max_new_tokens_limit=self.max_new_tokens_limit,
                              max_question_chars=self.max_question_chars,
                              auto_reset_frames=self.auto_reset_frames,
                              max_concurrent_queries=self.max_concurrent_queries,
                              query_queue_depth=self.query_queue_depth,
                              query_queue_timeout=self.query_queue_timeout,
                              prefix_cache_mb=self.prefix_cache_mb, frame_selection=self.frame_selection,
                              prefix_prefetch=self.prefix_prefetch)
        try:
            return config.validate()
        except ValueError as exc:
            raise ConfigError(f"inconsistent parameters: {exc}") from None


class ConfigError(ValueError):
    """Parameters that cannot work together, or weights that cannot be loaded (with the reason)."""


def executor_threads(max_concurrent_queries: int, query_queue_depth: int = 0) -> int:
    """Executor threads so that questions never starve the other callback groups: a question's
    callback holds a thread (waiting, no CPU) while it runs or waits in the queue, so one per
    running and per waiting question, plus images, reset, timers and the default group, plus
    one for the instant BUSY answers and one for the action server's own requests."""
    return max_concurrent_queries + query_queue_depth + 6


# ---------------------------------------------------------------------------------- engine
def _resolve_device(name: str):
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_WEIGHT_PATHS = {
    "cut3r_weights": "CUT3R checkpoint file (e.g. cut3r_512_dpt_4_64.pth)",
    "vlm_base_dir": "LLaVA-Video-Qwen2 base model folder",
    "vlm_adapter_dir": "VLM-3R LoRA adapter folder",
}


def parse_vlm_config_overrides(text: str) -> dict:
    """The ``vlm_config_overrides`` parameter as a dict; ConfigError naming it when it is not valid."""
    try:
        return parse_config_overrides(text)
    except Vlm3rConfigError as exc:
        raise ConfigError(f"parameter 'vlm_config_overrides': {exc}") from None


def _make_llm(settings: NodeSettings):
    """The OpenAiLlm for llm_backend 'openai' (None: local); ConfigError naming the parameter."""
    if settings.llm_backend != "openai":
        return None
    from vlm3r_ros.engine.llm_backend import OpenAiLlm, OpenAiSettings

    if not settings.llm_model:
        raise ConfigError("parameter 'llm_model' is empty: with llm_backend 'openai' set it to the model name the "
                          "LLM server serves (vllm serve --served-model-name)")
    try:
        return OpenAiLlm(OpenAiSettings(url=settings.llm_url, model=settings.llm_model,
                                        timeout_s=settings.llm_timeout, retries=settings.llm_retries,
                                        backoff_s=settings.llm_backoff,
                                        api_key=os.environ.get("VLM3R_LLM_API_KEY", "")))
    except ValueError as exc:
        raise ConfigError(f"llm_backend 'openai': {exc}") from None


def build_engine(settings: NodeSettings):
    """Load the models named by the parameters into a SpatialEngine (slow: seconds to minutes).

    Raises ConfigError with a sentence naming the parameter for anything the user must fix.
    """
    engine_config = settings.engine_config()
    llm = _make_llm(settings)  # before the slow loads: bad server settings fail at once
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    device = _resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    tokenizer_dir = pathlib.Path(settings.tokenizer_dir) if settings.tokenizer_dir else None
    if settings.model_source == "tiny_random":
        source = ModelSource(tiny_random=True, seed=settings.random_seed, tokenizer_dir=tokenizer_dir)
    else:
        overrides = parse_vlm_config_overrides(settings.vlm_config_overrides)  # before the slow loads
        for name in _WEIGHT_PATHS:
            value = getattr(settings, name)
            if not value:
                raise ConfigError(
                    f"parameter '{name}' is empty: set it to the local path of the {_WEIGHT_PATHS[name]} "
                    f"(in config/vlm3r.yaml or with -p {name}:=PATH), or set model_source to tiny_random "
                    f"(config/tiny.yaml) to run on tiny random weights")
            if not os.path.exists(value):
                raise ConfigError(f"parameter '{name}' = {value!r}: no such file or folder")
        source = ModelSource(base=pathlib.Path(settings.vlm_base_dir), adapter=pathlib.Path(settings.vlm_adapter_dir),
                             cut3r=pathlib.Path(settings.cut3r_weights), tokenizer_dir=tokenizer_dir,
                             config_overrides=overrides)
    try:
        loaded = load_models(source, device, dtype, with_geometry=settings.geometry, llm=llm,
                             overrides_name="parameter 'vlm_config_overrides'")
    except LoadError as exc:
        raise ConfigError(f"cannot load the weights: {exc}") from None
    return SpatialEngine(loaded.pipeline, engine_config)
