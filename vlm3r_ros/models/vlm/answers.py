"""Reading the model's reply: an option letter, or a number with its unit.

The official VSI-Bench / VSTI-Bench scoring reads only the reply's first token; it lives
with the metrics (:func:`vlm3r_ros.eval.metrics.first_token`). Here:

* :func:`parse_answer`: a tolerant reader for the ROS service and for diagnostics, which
  also understands replies such as ``"The answer is B."``, ``"sofa"``, ``"2,5 m"`` or
  ``"twenty-one"``.

Rules of :func:`parse_answer` (each is tested in test/unit/test_vlm_answers.py):

Letters (``answer_type="choice"``, or ``"auto"`` with options). Leading phrases such as
``"Answer:"``, ``"The answer is"``, ``"The correct option is"``, ``"Option"`` are skipped,
as are quotes, ``*`` and ``#``. A letter then counts when it is

* the whole reply (``"B"``, ``"b"``), or wrapped: ``"(B)"``, ``"[B]"``;
* followed by ``.``, ``)``, ``:``, ``,``, ``;``, ``!`` or ``?`` (``"B."``, ``"B) sofa"``,
  ``"B: sofa"``, ``"b."``);
* followed by a line break (``"B\\nbecause ..."``);
* followed by a space and then something that is not a lower-case letter
  (``"B - sofa"``, ``"B 2.5"``).

A leading word such as ``"A chair is closer"`` or ``"I think"`` (a letter, a space, a
lower-case word) is English, not a choice. When no letter leads the reply, an explicit
marker later in it counts: ``"... answer is C"``, ``"... option (c)"`` (a lower-case letter
only in brackets, so ``"the answer is a chair"`` is no choice). With options,
the letter must be one of theirs (``"E"`` with four options is no choice).

Option text (``"text"``, or ``"auto"`` after no letter). The reply, lower-cased with
punctuation and a leading article removed, is compared with each option's text the same
way: an exact match wins; else the option whose text appears as whole words in the reply,
if exactly one does (the longest when one match contains the others, as "office chair"
contains "chair"); else, when the reply and exactly one option read as the same number,
that option.

Numbers (``"number"``, or ``"auto"`` without options). The first number in the reply
counts, in digits or in words:

* ``.`` is always the decimal point (``"1.000"`` is 1.0).
* ``,`` is a thousands separator only in the form ``1,000`` / ``12,345,678`` (groups of
  exactly three digits, the first group 1-3 digits not starting with 0), optionally with
  a ``.`` decimal part (``"1,234.5"``). Any other comma between digits is a decimal comma
  (``"2,5"`` is 2.5, ``"0,500"`` is 0.5). So ``"2,500"`` is 2500, not 2.5.
* A sign directly before the digits is kept (``"-3"``, ``"−3"``); ``"3-4"`` is 3 (the first
  number of a range), as is ``"between 3 and 4"``.
* Simple fractions ``"1/2"`` and exponents ``"1e3"`` are read.
* Number words: ``zero`` to ``nineteen``, the tens, ``hundred``, ``thousand``, joined by
  spaces, hyphens or ``and`` (``"twenty-one"``, ``"one hundred and five"``), and ``dozen``
  (``"a dozen"`` is 12, ``"two dozen"`` 24). Vague words (``"a few"``, ``"several"``,
  ``"none"``, ``"half"``) are not numbers.
* Hedges (``"about"``, ``"approximately"``, ``"~"``) are simply skipped.

Units. The word right after the number, when it is a known length, area or volume unit,
becomes ``unit`` in a canonical spelling: ``m cm mm km ft in yd`` and the square / cubic
forms ``m2 cm2 ... m3 ...`` (``"meters"`` -> ``"m"``, ``"sq ft"`` -> ``"ft2"``,
``"cubic meters"`` -> ``"m3"``, ``"m²"`` -> ``"m2"``). ``"in"`` counts as inches only at
the end of the reply or before punctuation (``"3 in the room"`` has no unit). Other words
(``"3 chairs"``) give ``unit=""``. :func:`to_meters` converts to metres, square metres or
cubic metres.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from .prompting import OPTION_LETTERS, split_option_label

ANSWER_TYPES = ("auto", "choice", "number", "text")


@dataclass(frozen=True)
class ParsedAnswer:
    """What was read from a reply.

    choice: option letter "A".."Z", or "" when none was read.
    value: the number read (float), or nan when none was read.
    unit: canonical unit after the number ("m", "cm", "m2", "ft3", ...), or "".
    raw: the reply exactly as given.
    """

    choice: str = ""
    value: float = math.nan
    unit: str = ""
    raw: str = ""

    @property
    def has_choice(self) -> bool:
        return bool(self.choice)

    @property
    def has_value(self) -> bool:
        return not math.isnan(self.value)


# ------------------------------------------------------------------ letters
_PREFIX_RE = re.compile(
    r"""^(?:
        (?:so,?\s+)?(?:the\s+)?(?:correct\s+|final\s+|best\s+|right\s+)?
        (?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be))?\s*[:\-=]?\s*
      | (?:i\s+(?:think|believe|would\s+say)|it\s+is|it's)\b\s*[:,]?\s*
    )""", re.IGNORECASE | re.VERBOSE)
_WRAPPED_LETTER_RE = re.compile(r"^[(\[]([A-Za-z])[)\]]")
# A letter, then the end, punctuation, a line break, or a space and something other than a
# lower-case word.
_LETTER_END = r"(?=$|[.):,;!?]|[ \t]*[\r\n]|\s+[^a-z\s]|\s*$)"
_LEADING_LETTER_RE = re.compile(r"^([A-Za-z])" + _LETTER_END)
# "... answer is C", "... option (c)": a capital letter, or any letter in brackets.
_MARKED_LETTER_RE = re.compile(
    r"\b(?i:answer|option|choice)\b(?:\s+(?i:is|would\s+be|should\s+be))?\s*[:\-=]?\s*"
    r"(?:\(([A-Za-z])\)|([A-Z])" + _LETTER_END + ")")
_DECORATION = "\"'`*#_ \t\r\n"


def _strip_prefixes(text: str) -> tuple[str, bool]:
    """Remove leading decoration and answer phrases; also says whether a phrase was removed."""
    text = text.strip(_DECORATION)
    removed = False
    while True:
        match = _PREFIX_RE.match(text)
        if not match or match.end() == 0:
            return text, removed
        text = text[match.end():].strip(_DECORATION)
        removed = True


def _read_letter(text: str, allowed: str) -> str:
    body, _ = _strip_prefixes(text)
    for regex in (_WRAPPED_LETTER_RE, _LEADING_LETTER_RE):
        match = regex.match(body)
        if match:
            letter = match.group(1).upper()
            return letter if letter in allowed else ""
    for match in _MARKED_LETTER_RE.finditer(text):
        letter = (match.group(1) or match.group(2)).upper()
        if letter in allowed:
            return letter
    return ""


# ------------------------------------------------------------------ option text
_ARTICLE_RE = re.compile(r"^(?:the|a|an)\s+")


def _normalize_text(text: str) -> str:
    text = re.sub(r"[^\w\s.-]", " ", text.lower())
    text = re.sub(r"(?<!\d)[.-]|[.-](?!\d)", " ", text)  # keep "2.5" and "-3", drop other . and -
    text = " ".join(text.split())
    return _ARTICLE_RE.sub("", text)


def _match_option_text(text: str, options: Sequence[str]) -> str:
    body, _ = _strip_prefixes(text)
    reply = _normalize_text(body)
    if not reply:
        return ""
    texts = [_normalize_text(split_option_label(option)[1]) for option in options]
    exact = [i for i, t in enumerate(texts) if t and t == reply]
    if len(exact) == 1:
        return OPTION_LETTERS[exact[0]]
    contained = [i for i, t in enumerate(texts)
                 if t and re.search(rf"(?<![\w.]){re.escape(t)}(?![\w]|\.\d)", reply)]
    widest = [i for i in contained if all(texts[j] in texts[i] for j in contained)]
    if len(widest) == 1:
        return OPTION_LETTERS[widest[0]]
    value, unit = _read_number(body)
    if not math.isnan(value):
        same = [i for i, option in enumerate(options)
                if _read_number(split_option_label(option)[1]) == (value, unit)]
        if len(same) == 1:
            return OPTION_LETTERS[same[0]]
    return ""


# ------------------------------------------------------------------ numbers
_DIGITS_RE = re.compile(
    r"(?<![\w.,])(?P<sign>[-+−])?"
    r"(?P<num>[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?(?![,\d])"  # 1,000 / 1,234.5 (thousands)
    r"|\d+[.,]\d+"  # 2.5 / 2,5 (decimal point or comma)
    r"|\d+"
    r"|\.\d+)"
    r"(?:/(?P<den>\d+)(?![\d.,]))?"
    r"(?:[eE](?P<exp>[-+]?\d+))?"
    r"(?!\d)")  # a unit may follow directly: "3m"
_UNITS_WORD = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}
_TENS_WORD = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
              "seventy": 70, "eighty": 80, "ninety": 90}
_MULTIPLIERS = ("dozen", "hundred", "thousand")
_NUMBER_WORD = r"\b(?:" + "|".join(["an?", *_UNITS_WORD, *_TENS_WORD, *_MULTIPLIERS]) + r")\b"
# A run of number words: "twenty-one", "one hundred and five", "a dozen".
_NUMBER_WORD_RE = re.compile(rf"{_NUMBER_WORD}(?:[\s-]+(?:and[\s-]+)?{_NUMBER_WORD})*", re.IGNORECASE)


def _words_to_number(phrase: str) -> float:
    """'twenty-one' -> 21, 'one hundred and five' -> 105, 'a dozen' -> 12; nan if not a number."""
    words = [w for w in re.split(r"[\s-]+", phrase.lower()) if w and w != "and"]
    total, current, seen = 0, 0, False
    for i, word in enumerate(words):
        if word in ("a", "an"):
            if i + 1 < len(words) and words[i + 1] in _MULTIPLIERS:
                continue  # "a dozen" = "one dozen"
            if seen:
                break  # "two and a half": stop at "a"
            continue  # "a two" reads as "two"
        if word in _UNITS_WORD:
            current += _UNITS_WORD[word]
        elif word in _TENS_WORD:
            current += _TENS_WORD[word]
        elif word == "dozen":
            current = (current or 1) * 12
        elif word == "hundred":
            current = (current or 1) * 100
        elif word == "thousand":
            total += (current or 1) * 1000
            current = 0
        seen = True
    return float(total + current) if seen else math.nan


def _digits_value(match: re.Match) -> float:
    num = match.group("num")
    if re.fullmatch(r"[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?", num):
        num = num.replace(",", "")
    else:
        num = num.replace(",", ".")
    value = float(num)
    if match.group("den"):
        den = float(match.group("den"))
        value = value / den if den else math.nan
    if match.group("exp"):
        value *= 10.0 ** int(match.group("exp"))
    if match.group("sign") in ("-", "−"):
        value = -value
    return value


# Canonical unit -> (metres per unit, power). Aliases below map spellings to these.
_UNIT_SCALE = {
    "mm": 1e-3, "cm": 1e-2, "m": 1.0, "km": 1e3,
    "in": 0.0254, "ft": 0.3048, "yd": 0.9144,
}
_UNIT_ALIASES = {
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "m": ("m", "meter", "meters", "metre", "metres"),
    "km": ("km", "kilometer", "kilometers", "kilometre", "kilometres"),
    "in": ("in", "inch", "inches"),
    "ft": ("ft", "foot", "feet"),
    "yd": ("yd", "yds", "yard", "yards"),
}


def _unit_table() -> dict[str, str]:
    """Every accepted spelling (lower case, single spaces) -> canonical unit."""
    table = {}
    for base, aliases in _UNIT_ALIASES.items():
        for alias in aliases:
            table[alias] = base
            for power, word, short, after in ((2, "square", "sq", "squared"), (3, "cubic", "cu", "cubed")):
                canonical = f"{base}{power}"
                for spelling in (f"{word} {alias}", f"{short} {alias}", f"{short}. {alias}", f"{alias} {after}"):
                    table[spelling] = canonical
                if alias == base:  # m2, m², m^2, sqm, sq.m
                    for spelling in (f"{base}{power}", f"{base}{'²' if power == 2 else '³'}", f"{base}^{power}",
                                     f"{short}{base}", f"{short}.{base}"):
                        table[spelling] = canonical
    return table


UNIT_SPELLINGS = _unit_table()
_UNIT_RE = re.compile(
    r"\s*(?P<unit>" + "|".join(re.escape(s).replace(r"\ ", r"\s+")
                               for s in sorted(UNIT_SPELLINGS, key=len, reverse=True)) + r")"
    r"(?![\w²³^])", re.IGNORECASE)


def canonical_unit(unit: str) -> str:
    """``"square meters"`` -> ``"m2"``, ``"Feet"`` -> ``"ft"``; raises ValueError for unknown units."""
    key = " ".join(unit.strip().lower().split())
    if key not in UNIT_SPELLINGS:
        raise ValueError(f"unknown unit {unit!r}; known: length m/cm/mm/km/ft/in/yd and their square and "
                         f"cubic forms (e.g. 'm2', 'square meters', 'sq ft', 'cm3')")
    return UNIT_SPELLINGS[key]


def to_meters(value: float, unit: str) -> float:
    """``value`` in ``unit`` converted to metres (length), square metres (area) or cubic metres (volume).

    ``unit`` is any spelling :func:`canonical_unit` knows. Raises ValueError for an unknown
    or empty unit: a number without a unit has no meaning to convert.
    """
    canonical = canonical_unit(unit)
    power = int(canonical[-1]) if canonical[-1] in "23" else 1
    base = canonical[:-1] if power > 1 else canonical
    return float(value) * _UNIT_SCALE[base] ** power


def _read_unit(text: str) -> str:
    match = _UNIT_RE.match(text)
    if not match:
        return ""
    canonical = UNIT_SPELLINGS[" ".join(match.group("unit").lower().split())]
    if canonical == "in" and not re.match(r"\s*(?:$|[.,;:!?)\]])", text[match.end():]):
        return ""  # "3 in the room": the preposition, not inches
    return canonical


def _read_number(text: str) -> tuple[float, str]:
    digits = _DIGITS_RE.search(text)
    words = _NUMBER_WORD_RE.search(text)
    word_value = math.nan
    while words:  # the first run of words that really is a number ("a chair" is not)
        word_value = _words_to_number(words.group(0))
        if not math.isnan(word_value):
            break
        words = _NUMBER_WORD_RE.search(text, words.end())
    if digits and (not words or math.isnan(word_value) or digits.start() <= words.start()):
        return _digits_value(digits), _read_unit(text[digits.end():])
    if words and not math.isnan(word_value):
        return word_value, _read_unit(text[words.end():])
    return math.nan, ""


# ------------------------------------------------------------------ the reader
def parse_answer(text: str, options: Sequence[str] | None = None, answer_type: str = "auto") -> ParsedAnswer:
    """Read an option letter or a number from a reply (rules in the module docstring).

    ``answer_type``: ``"choice"`` reads letters only; ``"text"`` matches the options' texts
    only; ``"number"`` reads a number and unit; ``"auto"`` reads a letter then an option's
    text when options are given, else a number. Options are labelled or not, as
    :func:`~vlm3r_ros.models.vlm.prompting.build_prompt` accepts them.
    """
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    if not isinstance(text, str):
        raise TypeError(f"the reply must be a string, got {type(text).__name__}")
    options = list(options) if options is not None else None
    if options is not None and len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options, got {len(options)}")
    allowed = OPTION_LETTERS[:len(options)] if options else OPTION_LETTERS
    if answer_type == "auto":
        answer_type = "choice+text" if options else "number"

    if answer_type == "number":
        value, unit = _read_number(text)
        return ParsedAnswer(value=value, unit=unit, raw=text)
    choice = ""
    if answer_type in ("choice", "choice+text"):
        choice = _read_letter(text, allowed)
    if not choice and answer_type in ("text", "choice+text") and options:
        choice = _match_option_text(text, options)
    return ParsedAnswer(choice=choice, raw=text)
