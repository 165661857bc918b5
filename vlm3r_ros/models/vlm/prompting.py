"""Prompt text, prompt token ids and greedy-generation defaults of VLM-3R at evaluation.

The prompt is the ``qwen_1_5`` conversation template (CHATML separators) around the
VSI-Bench / VSTI-Bench question text. Written with one line per ``\\n`` (the prompt ends
with the ``\\n`` after ``assistant``)::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    <image>
    {context}<|im_end|>
    <|im_start|>assistant

``{context}`` (:func:`build_context`) is, for a multiple-choice question::

    These are frames of a video.
    {question}
    Options:
    A. {option 1}
    ...
    {n-th letter}. {option n}
    Answer with the option's letter from the given choices directly.

and for a numeric / open question::

    These are frames of a video.
    {question}
    Please answer the question using a single word or phrase.

The image marker is ``"<image>" * num_videos + "\\n"`` (one video per question at eval).
Evaluation adds no time instruction; training and the official demo put one right after
the image marker. The reference gives that sentence only with its numbers elided, so this
module does not format it: a caller passes the whole sentence as ``time_instruction`` and it
is inserted as ``<image>\\n{time_instruction}\\n{context}`` (the ``\\n`` after it is our
choice, not a documented fact).

:func:`tokenize_with_image` tokenizes the text around each ``<image>`` on its own (no BOS:
Qwen2 has none) and puts :data:`IMAGE_TOKEN_INDEX` (-200) between the pieces, where the
model splices in the visual tokens.

Generation at eval is greedy (:data:`EVAL_GENERATION`): ``max_new_tokens=16``, no
sampling, one beam, stopping at ``<|im_end|>``; the reply is decoded without special
tokens and stripped (:func:`decode_reply`).

Source: test/fixtures/reference/vlm3r/README.md, section 3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645

SYSTEM_MESSAGE = "You are a helpful assistant."
PRE_PROMPT = "These are frames of a video."
OPTIONS_HEADER = "Options:"
MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_POST_PROMPT = "Please answer the question using a single word or phrase."

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_OPTIONS = len(OPTION_LETTERS)
DEFAULT_MAX_CHARS = 2000

# Text a caller may not put in a question, option or time instruction: another "<image>"
# would splice in a second copy of the video, and the CHATML markers are tokenized as
# special tokens, which would break the conversation structure.
RESERVED_STRINGS = (IMAGE_TOKEN, IM_START, IM_END, ENDOFTEXT)

# A VSI-Bench style label at the start of an option: "A. chair".
_LABEL_RE = re.compile(r"^([A-Z])\. ")


class PromptError(ValueError):
    """A question, option list or setting that cannot make a prompt.

    ``code`` is a short machine-readable reason (``EMPTY_QUESTION``, ``QUESTION_TOO_LONG``,
    ...); the message says what was expected and what came.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


# ------------------------------------------------------------------ generation settings
@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of the official evaluation (greedy, short answers)."""

    max_new_tokens: int = 16  # task YAMLs of VSI-Bench / VSTI-Bench
    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    num_beams: int = 1
    use_cache: bool = True
    stop_token_id: int = IM_END_ID  # KeywordsStoppingCriteria on "<|im_end|>"


EVAL_GENERATION = GenerationSettings()
DEMO_GENERATION = GenerationSettings(max_new_tokens=1024)  # playground/demo/video_demo.py
EVAL_MAX_NEW_TOKENS = EVAL_GENERATION.max_new_tokens
DO_SAMPLE = EVAL_GENERATION.do_sample


# ------------------------------------------------------------------ prompt text
def split_option_label(option: str) -> tuple[str, str]:
    """``"B. sofa"`` -> ``("B", "sofa")``; an option without a label -> ``("", option)``."""
    match = _LABEL_RE.match(option)
    if match:
        return match.group(1), option[match.end():]
    return "", option


def label_options(options: Sequence[str], *, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Validate ``options`` and return them labelled ``"A. ..."``, ``"B. ..."``, ...

    Options are used as given when every one already starts with its own label in order
    (``"A. "``, ``"B. "``, ... as VSI-Bench writes them); they are labelled when none starts
    with a label. A mix, or labels out of order, is an error, as are empty options, options
    with a line break, more than 26 options, and options longer than ``max_chars``.
    """
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise PromptError("BAD_OPTIONS", f"options must be a list of strings, got {type(options).__name__}")
    if len(options) == 0:
        raise PromptError("BAD_OPTIONS", "options is an empty list; pass None for a question without options")
    if len(options) > MAX_OPTIONS:
        raise PromptError("TOO_MANY_OPTIONS", f"at most {MAX_OPTIONS} options (A-Z), got {len(options)}")
    labels = []
    for i, option in enumerate(options):
        if not isinstance(option, str):
            raise PromptError("BAD_OPTIONS", f"option {i + 1} must be a string, got {type(option).__name__}")
        label, text = split_option_label(option)
        if not text.strip():
            raise PromptError("EMPTY_OPTION", f"option {i + 1} ({option!r}) has no text")
        if "\n" in option or "\r" in option:
            raise PromptError("BAD_OPTIONS", f"option {i + 1} contains a line break; one line per option")
        if len(option) > max_chars:
            raise PromptError("OPTION_TOO_LONG", f"option {i + 1} has {len(option)} characters, the limit is "
                                                 f"{max_chars}; shorten it (nothing is truncated)")
        _check_reserved(option, f"option {i + 1}")
        labels.append(label)
    if all(label == OPTION_LETTERS[i] for i, label in enumerate(labels)):
        return list(options)
    if not any(labels):
        return [f"{OPTION_LETTERS[i]}. {option}" for i, option in enumerate(options)]
    raise PromptError("MIXED_OPTION_LABELS", f"options must all carry their labels in order ('A. ', 'B. ', ...) "
                                             f"or none at all; got labels {labels}")


def build_context(question: str, options: Sequence[str] | None = None, *,
                  max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The user text of VSI-Bench / VSTI-Bench evaluation (``{context}`` in the module docstring).

    The question is used verbatim (not stripped, never truncated).
    """
    if max_chars < 1:
        raise PromptError("BAD_LIMIT", f"max_chars must be >= 1, got {max_chars}")
    if question is None or (isinstance(question, str) and not question.strip()):
        if options is not None:
            raise PromptError("OPTIONS_WITHOUT_QUESTION", "options were given but the question is empty")
        raise PromptError("EMPTY_QUESTION", "the question is empty; ask something about the video")
    if not isinstance(question, str):
        raise PromptError("BAD_QUESTION", f"the question must be a string, got {type(question).__name__}")
    if len(question) > max_chars:
        raise PromptError("QUESTION_TOO_LONG", f"the question has {len(question)} characters, the limit is "
                                               f"{max_chars}; shorten it (nothing is truncated)")
    _check_reserved(question, "the question")
    if options is None:
        return f"{PRE_PROMPT}\n{question}\n{OPEN_POST_PROMPT}"
    lines = "\n".join(label_options(options, max_chars=max_chars))
    return f"{PRE_PROMPT}\n{question}\n{OPTIONS_HEADER}\n{lines}\n{MCA_POST_PROMPT}"


def build_prompt(question: str, options: Sequence[str] | None = None, *, num_videos: int = 1,
                 time_instruction: str | None = None, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The full ``qwen_1_5`` prompt for one question about ``num_videos`` videos.

    ``options`` makes it multiple choice (see :func:`label_options`); None makes it a
    numeric / open question. ``time_instruction`` (training / demo only; eval has none) is
    inserted verbatim after the image marker, followed by a newline.
    """
    if isinstance(num_videos, bool) or not isinstance(num_videos, int) or num_videos < 1:
        raise PromptError("BAD_NUM_VIDEOS", f"num_videos must be an int >= 1, got {num_videos!r}")
    context = build_context(question, options, max_chars=max_chars)
    image = IMAGE_TOKEN * num_videos + "\n"
    if time_instruction is not None:
        if not isinstance(time_instruction, str) or not time_instruction.strip():
            raise PromptError("EMPTY_TIME_INSTRUCTION", "time_instruction is empty; pass None to leave it out")
        if len(time_instruction) > max_chars:
            raise PromptError("TIME_INSTRUCTION_TOO_LONG", f"time_instruction has {len(time_instruction)} "
                                                           f"characters, the limit is {max_chars}")
        _check_reserved(time_instruction, "time_instruction")
        image += time_instruction + "\n"
    return (f"{IM_START}system\n{SYSTEM_MESSAGE}{IM_END}\n"
            f"{IM_START}user\n{image}{context}{IM_END}\n"
            f"{IM_START}assistant\n")


def _check_reserved(text: str, what: str) -> None:
    for reserved in RESERVED_STRINGS:
        if reserved in text:
            raise PromptError("RESERVED_TOKEN", f"{what} contains {reserved!r}, which the prompt format reserves")


# ------------------------------------------------------------------ token ids
def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without any added BOS/EOS, for a ``tokenizers.Tokenizer`` or a
    transformers tokenizer."""
    encoded = tokenizer.encode(text, add_special_tokens=False)
    ids = encoded.ids if hasattr(encoded, "ids") else encoded  # tokenizers.Encoding or list[int]
    return [int(i) for i in ids]


def _token_id(tokenizer, token: str) -> int | None:
    if hasattr(tokenizer, "token_to_id"):  # tokenizers.Tokenizer
        return tokenizer.token_to_id(token)
    token_id = tokenizer.convert_tokens_to_ids(token)  # transformers
    return None if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None) else token_id


def tokenize_with_image(prompt: str, tokenizer) -> list[int]:
    """Token ids of ``prompt`` with :data:`IMAGE_TOKEN_INDEX` in place of each ``<image>``.

    Each piece of text between ``<image>`` markers is tokenized on its own, with no BOS
    (Qwen2 has none), and the pieces are joined with -200. The CHATML markers in the text
    must come out as single special ids; a tokenizer that does not know them is refused.
    """
    ids: list[int] = []
    for i, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            chunk_ids = _encode(tokenizer, chunk)
            for special in (IM_START, IM_END):
                count = chunk.count(special)
                if count and chunk_ids.count(_token_id(tokenizer, special)) != count:
                    raise ValueError(f"the tokenizer does not encode {special!r} as one special token; "
                                     f"use the Qwen2 tokenizer (vlm3r_ros.models.vlm.tokenizer)")
            ids.extend(chunk_ids)
    return ids


def stop_token_ids(tokenizer=None) -> tuple[int, ...]:
    """Ids that end generation: ``<|im_end|>``. With a tokenizer, its own id for that token."""
    if tokenizer is None:
        return (IM_END_ID,)
    token_id = _token_id(tokenizer, IM_END)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {IM_END!r} token; use the Qwen2 tokenizer")
    return (int(token_id),)


def decode_reply(generated_ids: Sequence[int], tokenizer) -> str:
    """The answer text: the new ids up to the first stop id, decoded without special tokens, stripped."""
    ids = [int(i) for i in generated_ids]
    stops = set(stop_token_ids(tokenizer))
    for i, token_id in enumerate(ids):
        if token_id in stops:
            ids = ids[:i]
            break
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
