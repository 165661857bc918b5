"""Training sequences in the ``qwen_1_5`` chat format, with labels on the assistant's answers only.

A conversation is the system turn, then alternating user / assistant turns; the first user
turn carries the one ``<image>`` marker (the video). Each turn is
``<|im_start|>{role}\\n{content}<|im_end|>\\n``, as the official ``preprocess_qwen``
(``llava/train/train.py`` in VITA-Group/VLM-3R) writes it.

Labels: the official code labels every assistant turn (its role header included) and then
also un-masks the structural tokens ``\\n``, ``<|im_start|>`` and ``<|im_end|>`` everywhere,
user turns included. We label only what the model must produce when it answers: each
assistant turn's content and its closing ``<|im_end|>`` (the stop token the inference
pipeline waits for). Everything else is :data:`IGNORE_INDEX`.

Without the time instruction, the prompt part of a one-question conversation is token for token
the prompt :func:`~vlm3r_ros.models.vlm.prompting.build_prompt` gives at inference.

Time instruction (``--add_time_instruction True`` of the official run, default here too): the
official dataset (``llava/train/train.py``, ``LazySupervisedDataset._get_item``, video branch,
with ``process_video_with_decord`` in ``llava/utils.py``) rewrites the first user turn as
``<image>\n{instruction}\n{turn with "<image>" removed}``; the turn was ``<image>\n{question}``
(``vlm_3r_data_process/src/format_qa.py``), so a blank line separates the instruction from the
question. The instruction is :func:`time_instruction` (sic: no space after the frame list). The
official *evaluation* (``thinking-in-space/lmms_eval/models/vlm_3r.py``) asks
``<image>\n{question}`` with no time instruction, and so do ``vlm3r-eval`` / ``vlm3r-ask`` here:
the official recipe trains with it and evaluates without. A run meant to be asked by this
project's tools exactly as it was trained sets ``time_instruction=False`` (``--no-time-instruction``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from vlm3r_ros.models.vlm.prompting import (IM_END, IM_START, IMAGE_TOKEN, SYSTEM_MESSAGE, _encode, _token_id,
                                             tokenize_with_image)

IGNORE_INDEX = -100  # torch cross_entropy's ignore_index, as the official IGNORE_INDEX
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class ConversationError(ValueError):
    """A conversation we cannot train on; the message says what was expected."""


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


@dataclass
class Encoded:
    input_ids: list[int]  # with IMAGE_TOKEN_INDEX (-200) where the video goes
    labels: list[int]  # IGNORE_INDEX except the answers' tokens


def normalize_turns(turns: Sequence[Turn | dict], *, where: str = "conversation") -> list[Turn]:
    """Check roles and alternation; put ``<image>\\n`` first in the first user turn if it has none."""
    out: list[Turn] = []
    for i, t in enumerate(turns):
        if isinstance(t, dict):
            role = t.get("from", t.get("role"))
            content = t.get("value", t.get("content"))
        else:
            role, content = t.role, t.content
        if role not in ROLES:
            raise ConversationError(f"{where}: turn {i}: role {role!r} is not one of {sorted(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ConversationError(f"{where}: turn {i}: expected non-empty text, got {content!r}")
        out.append(Turn(ROLES[role], content))
    if len(out) < 2 or len(out) % 2:
        raise ConversationError(f"{where}: expected user/assistant pairs, got {len(out)} turns")
    for i, t in enumerate(out):
        expected = "user" if i % 2 == 0 else "assistant"
        if t.role != expected:
            raise ConversationError(f"{where}: turn {i} is {t.role!r}, expected {expected!r} (turns alternate, "
                                    f"the user first)")
    markers = sum(t.content.count(IMAGE_TOKEN) for t in out)
    if markers == 0:
        out[0] = Turn("user", f"{IMAGE_TOKEN}\n{out[0].content}")
    elif markers != 1 or IMAGE_TOKEN not in out[0].content:
        raise ConversationError(f"{where}: expected one {IMAGE_TOKEN} marker in the first user turn (one video), "
                                f"found {markers} in all")
    return out


# The official frame-folder branch of llava/train/train.py hard-codes 2 frames per second.
FOLDER_FPS = 2.0


def time_instruction(total_frames: int, fps: float, indices: Sequence[int]) -> str:
    """The official time instruction for a clip of ``total_frames`` frames at ``fps`` of which the
    frames ``indices`` were sampled (``process_video_with_decord``: video length ``total / fps``,
    each sampled frame at ``index / fps``, two decimals)."""
    if total_frames < 1 or fps <= 0 or not indices:
        raise ValueError(f"time instruction: need frames, a positive fps and sampled indices; got "
                         f"{total_frames} frames, fps {fps}, indices {list(indices)}")
    times = ",".join(f"{i / fps:.2f}s" for i in indices)
    return (f"The video lasts for {total_frames / fps:.2f} seconds, and {len(indices)} frames are uniformly "
            f"sampled from it. These frames are located at {times}.Please answer the following questions "
            f"related to this video.")


def with_time_instruction(turns: Sequence[Turn], instruction: str) -> list[Turn]:
    """The official rewrite of the first user turn: ``<image>\n{instruction}\n{turn without <image>}``."""
    first = turns[0]
    return [Turn(first.role, f"{IMAGE_TOKEN}\n{instruction}\n{first.content.replace(IMAGE_TOKEN, '')}"),
            *turns[1:]]


def encode_conversation(turns: Sequence[Turn], tokenizer) -> Encoded:
    """Token ids and labels of a normalized conversation (:func:`normalize_turns`)."""
    im_end = _token_id(tokenizer, IM_END)
    ids: list[int] = []
    labels: list[int] = []

    def context(text: str) -> None:
        piece = tokenize_with_image(text, tokenizer)
        ids.extend(piece)
        labels.extend([IGNORE_INDEX] * len(piece))

    pending = f"{IM_START}system\n{SYSTEM_MESSAGE}{IM_END}\n"
    for turn in turns:
        if turn.role == "user":
            pending += f"{IM_START}user\n{turn.content}{IM_END}\n{IM_START}assistant\n"
            continue
        context(pending)
        answer = _encode(tokenizer, turn.content) + [im_end]
        ids.extend(answer)
        labels.extend(answer)
        pending = "\n"
    context(pending)
    return Encoded(ids, labels)
