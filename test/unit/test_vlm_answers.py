"""Reading replies: option letters, option texts, numbers with units, unit conversion, and the
official first-word scoring."""
import math

import pytest

from vlm3r_ros.models.vlm.answers import (
    ParsedAnswer, canonical_unit, parse_answer, to_meters)

TWO = ['A. chair', 'B. sofa']
FOUR = ['A. left', 'B. right', 'C. back', 'D. front']  # texts that never occur in the letter cases


def choice(text, options=FOUR, answer_type='auto'):
    return parse_answer(text, options, answer_type).choice


def number(text):
    parsed = parse_answer(text, None, 'number')
    return parsed.value, parsed.unit


# ------------------------------------------------------------------ letters
@pytest.mark.parametrize('text, expected', [
    ('B', 'B'),
    ('B.', 'B'),
    ('(B)', 'B'),
    ('[C]', 'C'),
    ('B) sofa', 'B'),
    ('B: sofa', 'B'),
    ('B, I think', 'B'),
    ('b', 'B'),
    ('b.', 'B'),
    ('  B  ', 'B'),
    ('**B**', 'B'),
    ('"D"', 'D'),
    ('Answer: B', 'B'),
    ('answer:B', 'B'),
    ('The answer is B.', 'B'),
    ('The correct answer is (C).', 'C'),
    ('Final answer: D', 'D'),
    ('Option C', 'C'),
    ('I think it is C', 'C'),
    ("It's D.", 'D'),
    ('B - sofa', 'B'),
    ('B\nbecause it is closer', 'B'),
    ('B because it is closer', ''),  # a lower-case word after a space: read as prose
    ('Looking at the frames, the answer is C.', 'C'),  # an explicit marker later in the reply
    ('It must be option (d) then', 'D'),
    ('A chair is closer', ''),  # the article, not a letter
    ('A', 'A'),
    ('I see a bed', ''),
    ('I', ''),  # a letter, but not one of the four options
    ('E', ''),  # out of range
    ('The answer is e', ''),  # a lower-case letter after a marker needs brackets
    ('Bathroom', ''),
    ('', ''),
    ('   ', ''),
    ('?!', ''),
    ('the answer is a chair', ''),
])
def test_letters(text, expected):
    assert choice(text) == expected


def test_letter_rules_are_the_same_for_choice_only():
    assert choice('A chair is closer', answer_type='choice') == ''
    assert choice('(b)', answer_type='choice') == 'B'
    assert choice('right', answer_type='choice') == ''  # choice reads letters only


def test_choice_without_options_accepts_any_letter():
    assert parse_answer('Z.', None, 'choice').choice == 'Z'
    assert parse_answer('A chair', None, 'choice').choice == ''


# ------------------------------------------------------------------ option texts
@pytest.mark.parametrize('text, options, expected', [
    ('sofa', TWO, 'B'),
    ('Sofa.', TWO, 'B'),
    ('The sofa', TWO, 'B'),
    ('a chair', TWO, 'A'),
    ('A chair is closer', TWO, 'A'),  # no letter (article), but the option text matches
    ('It is the sofa.', TWO, 'B'),
    ('the sofa, not the chair', TWO, ''),  # two options named: no guess
    ('table', TWO, ''),
    ('office chair', ['A. chair', 'B. office chair'], 'B'),  # the longest match that contains the others
    ('chair', ['A. chair', 'B. office chair'], 'A'),  # exact wins
    ('armchair', ['A. chair', 'B. sofa'], ''),  # whole words only
    ('1.2', ['A. 0.8', 'B. 1.2', 'C. 2.5'], 'B'),
    ('1.20 m', ['A. 0.8 m', 'B. 1.2 m'], 'B'),  # same number and unit
    ('2', ['A. 1.2', 'B. 2.5'], ''),
    ('back', FOUR, 'C'),
    ('front-left', ['A. front-left', 'B. front-right'], 'A'),
])
def test_option_text(text, options, expected):
    assert parse_answer(text, options).choice == expected


def test_text_mode_matches_texts_only():
    assert parse_answer('sofa', TWO, 'text').choice == 'B'
    assert parse_answer('B', TWO, 'text').choice == ''
    parsed = parse_answer('sofa', None, 'text')
    assert parsed.choice == '' and math.isnan(parsed.value) and parsed.raw == 'sofa'


def test_auto_with_options_reads_no_number():
    parsed = parse_answer('2.5', ['A. 2.5', 'B. 3'])
    assert parsed.choice == 'A' and math.isnan(parsed.value)


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize('text, value, unit', [
    ('2.5', 2.5, ''),
    ('2.5 meters', 2.5, 'm'),
    ('2,5 m', 2.5, 'm'),  # decimal comma
    ('1,000', 1000.0, ''),  # thousands separator: groups of exactly three digits
    ('12,345,678', 12345678.0, ''),
    ('1,234.5', 1234.5, ''),
    ('2,500', 2500.0, ''),
    ('0,500', 0.5, ''),  # a leading 0 group is not a thousands group
    ('1,0000', 1.0, ''),  # four digits after the comma: decimal comma
    ('1.000', 1.0, ''),  # '.' is always the decimal point
    ('-3', -3.0, ''),
    ('\u22123', -3.0, ''),  # unicode minus
    ('+7', 7.0, ''),
    ('about 3', 3.0, ''),
    ('approximately 3.2 m', 3.2, 'm'),
    ('~4.5m', 4.5, 'm'),
    ('3m', 3.0, 'm'),
    ('three', 3.0, ''),
    ('Three', 3.0, ''),
    ('twenty-one', 21.0, ''),
    ('twenty one chairs', 21.0, ''),
    ('one hundred and five', 105.0, ''),
    ('one thousand two hundred', 1200.0, ''),
    ('a dozen', 12.0, ''),
    ('two dozen', 24.0, ''),
    ('a two', 2.0, ''),
    ('an apple and three pears', 3.0, ''),
    ('twelve feet', 12.0, 'ft'),
    ('zero', 0.0, ''),
    ('3 cm', 3.0, 'cm'),
    ('150 centimeters.', 150.0, 'cm'),
    ('25 mm', 25.0, 'mm'),
    ('1.5 km', 1.5, 'km'),
    ('6 ft', 6.0, 'ft'),
    ('6 feet', 6.0, 'ft'),
    ('1 foot', 1.0, 'ft'),
    ('12 in', 12.0, 'in'),
    ('12 inches', 12.0, 'in'),
    ('3 in the room', 3.0, ''),  # the preposition, not inches
    ('3 yd', 3.0, 'yd'),
    ('20 m2', 20.0, 'm2'),
    ('20 m²', 20.0, 'm2'),
    ('20 m^2', 20.0, 'm2'),
    ('20 sqm', 20.0, 'm2'),
    ('20 square meters', 20.0, 'm2'),
    ('20 square metres', 20.0, 'm2'),
    ('20 sq. m', 20.0, 'm2'),
    ('200 sq ft', 200.0, 'ft2'),
    ('200 square feet', 200.0, 'ft2'),
    ('20 meters squared', 20.0, 'm2'),
    ('1.5 cubic meters', 1.5, 'm3'),
    ('1.5 m³', 1.5, 'm3'),
    ('40 cu ft', 40.0, 'ft3'),
    ('3 min', 3.0, ''),  # not metres
    ('3 chairs', 3.0, ''),
    ('3-4 m', 3.0, ''),  # the first number of a range; the unit belongs to the second
    ('between 3 and 4 meters', 3.0, ''),
    ('1/2', 0.5, ''),
    ('3/4 m', 0.75, 'm'),
    ('1e3', 1000.0, ''),
    ('2.5e-1', 0.25, ''),
    ('.5', 0.5, ''),
    ('2.5.', 2.5, ''),
    ('The answer is 7.', 7.0, ''),
    ('Answer: 3.5 meters', 3.5, 'm'),
    ('There are 4 chairs and 2 tables', 4.0, ''),
    ('three chairs, 2 tables', 3.0, ''),
])
def test_numbers(text, value, unit):
    got_value, got_unit = number(text)
    assert got_value == pytest.approx(value) and got_unit == unit


@pytest.mark.parametrize('text', ['', 'gibberish', 'B', 'a chair', 'a few', 'several', 'none', 'half', 'x-ray',
                                  'room2', 'A1'])
def test_no_number(text):
    value, unit = number(text)
    assert math.isnan(value) and unit == ''


def test_auto_without_options_is_a_number():
    parsed = parse_answer('about 3.2 m')
    assert parsed == ParsedAnswer(choice='', value=3.2, unit='m', raw='about 3.2 m')
    assert parsed.has_value and not parsed.has_choice
    empty = parse_answer('')
    assert not empty.has_value and not empty.has_choice and empty.raw == ''


def test_raw_is_kept_exactly():
    text = '  The answer is B.\n'
    assert parse_answer(text, FOUR).raw == text


def test_bad_arguments():
    with pytest.raises(ValueError, match='answer_type must be one of'):
        parse_answer('B', FOUR, 'letter')
    with pytest.raises(TypeError, match='must be a string'):
        parse_answer(None)
    with pytest.raises(ValueError, match='at most 26 options'):
        parse_answer('B', ['x'] * 27)


# ------------------------------------------------------------------ units
@pytest.mark.parametrize('value, unit, meters', [
    (3, 'm', 3.0),
    (3, 'meters', 3.0),
    (250, 'cm', 2.5),
    (25, 'mm', 0.025),
    (1.5, 'km', 1500.0),
    (10, 'ft', 3.048),
    (10, 'feet', 3.048),
    (12, 'in', 0.3048),
    (12, 'inch', 0.3048),
    (1, 'yd', 0.9144),
    (20, 'm2', 20.0),
    (20, 'square meters', 20.0),
    (10000, 'cm2', 1.0),
    (100, 'sq ft', 9.290304),
    (1, 'ft2', 0.09290304),
    (2, 'm3', 2.0),
    (1e6, 'cm3', 1.0),
    (1, 'cubic feet', 0.028316846592),
    (1, 'Square  Meters', 1.0),
])
def test_to_meters(value, unit, meters):
    assert to_meters(value, unit) == pytest.approx(meters)


@pytest.mark.parametrize('unit', ['', 'chairs', 'seconds', 'm4'])
def test_to_meters_refuses_unknown_units(unit):
    with pytest.raises(ValueError, match='unknown unit'):
        to_meters(1.0, unit)


def test_parsed_unit_converts():
    parsed = parse_answer('about 150 cm')
    assert to_meters(parsed.value, parsed.unit) == pytest.approx(1.5)
    assert canonical_unit('sq. ft') == 'ft2' and canonical_unit('Metres') == 'm'
