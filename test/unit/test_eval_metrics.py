"""The official VSI-Bench / VSTI-Bench scores, checked against hand-computed values.

MRA thresholds are 0.50, 0.55, ..., 0.95; a question scores the fraction of thresholds theta
with |pred - gt| / gt <= 1 - theta. Every expected number below is worked out in its comment.
"""
import math

import pytest

from vlm3r_ros.eval.metrics import (
    MRA_THRESHOLDS, VSIBENCH, VSTIBENCH, ScoringError, detect_benchmark, first_token, mean_relative_accuracy,
    multiple_choice_accuracy, numeric_prediction, score, score_row, to_float)


def test_thresholds_are_the_official_ten():
    assert len(MRA_THRESHOLDS) == 10
    assert MRA_THRESHOLDS[0] == 0.5 and MRA_THRESHOLDS[-1] == 0.95
    assert [round(t, 2) for t in MRA_THRESHOLDS] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


# ------------------------------------------------------------------ first token (fuzzy_matching)
@pytest.mark.parametrize('reply, token', [
    ('B', 'B'),
    ('B.', 'B'),
    ('B..', 'B'),  # every trailing dot goes
    ('b. sofa', 'b'),
    ('2.5 m', '2.5'),
    ('2.5.', '2.5'),
    ('B.\n', 'B.'),  # no space: the dot is not trailing before strip(), so it stays
    ('B\nsofa', 'B\nsofa'),  # only a space splits (not a line break)
    (' B', ''),  # a leading space: the first piece is empty
    ('(B)', '(B)'),
    ('', ''),
])
def test_first_token_cuts_at_the_first_space(reply, token):
    assert first_token(reply) == token


def test_first_token_refuses_non_strings():
    with pytest.raises(ScoringError, match='string'):
        first_token(3)


# ------------------------------------------------------------------ multiple choice
@pytest.mark.parametrize('reply, answer, expected', [
    ('B', 'B', 1.0),
    ('b', 'B', 1.0),  # case is ignored
    ('B. sofa', 'B', 1.0),
    ('B.', 'b', 1.0),
    ('C', 'B', 0.0),
    ('The answer is B', 'B', 0.0),  # only the first token counts
    ('B\nbecause', 'B', 0.0),  # no space before the line break: the token is 'B\nbecause'
    ('B.\n', 'B', 0.0),  # token 'B.'
    ('', 'B', 0.0),
])
def test_multiple_choice_accuracy(reply, answer, expected):
    assert multiple_choice_accuracy(reply, answer) == expected


def test_multiple_choice_needs_an_answer_letter():
    with pytest.raises(ScoringError, match='answer letter'):
        multiple_choice_accuracy('B', '')


# ------------------------------------------------------------------ numbers read from replies
@pytest.mark.parametrize('reply, value', [
    ('3', 3.0),
    ('3 meters', 3.0),
    ('2.5.', 2.5),
    ('1e1', 10.0),
    ('1_000', 1000.0),  # Python's float() reads it, so the official scorer does
    ('-2', -2.0),
    ('3m', None),  # a unit glued to the number: float() fails
    ('2,5', None),
    ('three', None),
    ('about 3', None),
    ('', None),
])
def test_numeric_prediction_is_float_of_the_first_token(reply, value):
    assert numeric_prediction(reply) == value


def test_numeric_prediction_takes_numbers_as_they_are():
    assert numeric_prediction(2) == 2.0
    assert numeric_prediction(None) is None
    assert to_float(True) is None  # a boolean is no number
    assert math.isnan(numeric_prediction('nan'))


# ------------------------------------------------------------------ mean relative accuracy
@pytest.mark.parametrize('pred, gt, expected', [
    (2.0, 2.0, 1.0),  # error 0 passes all 10
    (1.5, 1.0, 0.1),  # error 0.5 <= 1 - 0.5 only (<= : the papers' < would give 0)
    (1.45, 1.0, 0.2),  # error 0.44999999999999996 == 1 - 0.55 in floats: theta 0.5, 0.55
    (1.2, 1.0, 0.7),  # error 0.19999999999999996 == 1 - 0.8 in floats: theta 0.5 .. 0.8 (7)
    (10.0, 8.0, 0.6),  # error 0.25 <= 1 - theta for theta 0.5 .. 0.75 (6)
    (0.96, 1.0, 1.0),  # error 0.040000000000000036 <= 1 - 0.95 = 0.050000000000000044: all 10
    (1.06, 1.0, 0.9),  # error 0.06000000000000005 > 0.050000000000000044: all but 0.95
    (0.5, 2.0, 0.0),  # error 0.75 > 0.5
    (-1.0, 1.0, 0.0),  # error 2
    (3.0, 30.0, 0.0),  # a count off by 10x
])
def test_mean_relative_accuracy_hand_computed(pred, gt, expected):
    assert mean_relative_accuracy(pred, gt) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize('pred', [None, math.nan, math.inf, -math.inf, True])
def test_mra_unreadable_or_non_finite_prediction_scores_zero(pred):
    assert mean_relative_accuracy(pred, 2.0) == 0.0


def test_mra_zero_ground_truth_is_exact_match():
    # The official code raises ZeroDivisionError here; we score an exact 0 as right, anything else wrong.
    assert mean_relative_accuracy(0.0, 0.0) == 1.0
    assert mean_relative_accuracy(-0.0, 0.0) == 1.0
    assert mean_relative_accuracy(0.1, 0.0) == 0.0


def test_mra_negative_ground_truth_divides_by_its_magnitude():
    # |-1.1 - (-1)| / |-1| = 0.10000000000000009 == 1 - 0.9 in floats: theta 0.5 .. 0.9 pass (9 of 10).
    # (The official code divides by -1, gets a negative ratio and scores every prediction 1.)
    assert mean_relative_accuracy(-1.1, -1.0) == pytest.approx(0.9)
    assert mean_relative_accuracy(1.0, -1.0) == 0.0  # error 2
    assert mean_relative_accuracy(-1.0, -1.0) == 1.0


@pytest.mark.parametrize('gt', [math.nan, math.inf, None, 'abc'])
def test_mra_refuses_a_non_finite_ground_truth(gt):
    with pytest.raises(ScoringError, match='finite number'):
        mean_relative_accuracy(1.0, gt)


def test_mra_reads_string_ground_truths_as_the_official_to_float():
    assert mean_relative_accuracy(2.3, '2.3') == 1.0


# ------------------------------------------------------------------ one row
def vsi(qtype, prediction, gt, **extra):
    return dict(id=extra.pop('id', 0), question_type=qtype, prediction=prediction, ground_truth=gt, **extra)


def test_score_row_uses_the_question_types_kind():
    assert score_row(vsi('object_rel_distance', 'A.', 'A', options=['A. x', 'B. y']), 'vsibench') == 1.0
    assert score_row(vsi('object_counting', '4', '4'), 'vsibench') == 1.0
    # error 1 / 5 = 0.2 exactly, above 1 - 0.8 = 0.19999999999999996: theta 0.5 .. 0.75 pass (6 of 10)
    assert score_row(vsi('object_counting', '4 chairs', '5'), 'vsibench') == pytest.approx(0.6)
    assert score_row(vsi('room_size_estimation', 'twenty', '20'), 'vsibench') == 0.0


def test_score_row_errors_and_missing_predictions_score_zero():
    assert score_row(vsi('object_counting', '4', '4', error='BUSY: try again'), 'vsibench') == 0.0
    assert score_row(vsi('object_counting', None, '4'), 'vsibench') == 0.0
    assert score_row(vsi('route_planning', None, 'B'), 'vsibench') == 0.0


def test_score_row_converted_numbers():
    row = vsi('object_size_estimation', '1.5 m', '150', prediction_value=150.0)
    assert score_row(row, 'vsibench') == 0.0  # official: 1.5 against 150 cm
    assert score_row(row, 'vsibench', numeric='converted') == 1.0
    no_value = vsi('object_size_estimation', '150', '150', prediction_value=None)
    assert score_row(no_value, 'vsibench', numeric='converted') == 1.0  # falls back to the official reading


def test_vstibench_multiple_choice_answers_are_in_mc_answer():
    row = dict(id=7, question_type='camera_obj_rel_dist_v1', prediction='C', ground_truth='chair', mc_answer='C')
    assert score_row(row, 'vstibench') == 1.0
    del row['mc_answer']
    row['ground_truth'] = 'C'  # not where VSTI-Bench keeps the letter
    with pytest.raises(ScoringError, match="row id 7: vstibench multiple-choice rows need the answer letter in "
                                           "'mc_answer'; got mc_answer=None"):
        score_row(row, 'vstibench')


def test_vsibench_letter_from_mc_answer_when_present_else_ground_truth():
    official = vsi('object_rel_distance', 'B', 'B', options=['A. bed', 'B. sofa'])  # the official test rows
    assert score_row(official, 'vsibench') == 1.0
    generated = vsi('object_rel_distance', 'B', 'sofa', mc_answer='B', options=['A. bed', 'B. sofa'])
    assert score_row(generated, 'vsibench') == 1.0  # VLM-3R data-pipeline rows: the value in ground_truth
    generated['mc_answer'] = None
    assert score_row(generated, 'vsibench') == 0.0  # falls back to ground_truth 'sofa'
    with pytest.raises(ScoringError, match="'mc_answer' or 'ground_truth'"):
        score_row(vsi('route_planning', 'A', None), 'vsibench')


def test_vstibench_numeric_types_ignore_their_options():
    # VSTI-Bench's numeric rows carry options and an mc_answer too; the official scorer uses ground_truth.
    row = dict(id=1, question_type='camera_displacement', prediction='1.0', ground_truth=1.0,
               options=['A. 1.0', 'B. 2.0'], mc_answer='A')
    assert score_row(row, 'vstibench') == 1.0


def test_unknown_question_type_is_an_error():
    with pytest.raises(ScoringError, match="row id 3: unknown question type 'object_colour' for vsibench"):
        score_row(vsi('object_colour', 'A', 'A', id=3), 'vsibench')


def test_bad_numeric_ground_truth_is_an_error():
    with pytest.raises(ScoringError, match='row id 0: a numeric ground truth must be a finite number'):
        score_row(vsi('object_counting', '3', 'three'), 'vsibench')


# ------------------------------------------------------------------ the summary
def test_vsibench_summary_merges_relative_direction_before_the_overall():
    rows = [
        vsi('object_counting', '4', '4'),  # 1.0
        vsi('object_counting', '2', '4'),  # error 0.5 -> 0.1
        vsi('object_rel_direction_easy', 'A', 'A'),  # easy 1.0
        vsi('object_rel_direction_medium', 'B', 'A'),  # medium 0.0
        vsi('object_rel_direction_hard', 'A', 'A'),  # hard: (1 + 0) / 2 = 0.5
        vsi('object_rel_direction_hard', 'C', 'A'),
        vsi('route_planning', 'D', 'd'),  # 1.0
    ]
    summary = score(rows, 'vsibench')
    assert summary.benchmark == 'vsibench'
    assert 'object_rel_direction_easy/medium/hard averaged' in summary.merge_rule
    # counting 55, relative direction (100 + 0 + 50) / 3 = 50, route planning 100
    assert summary.per_type == pytest.approx({'object_rel_direction': 50.0, 'route_planning': 100.0,
                                              'object_counting': 55.0})
    assert list(summary.per_type) == ['object_rel_direction', 'route_planning', 'object_counting']
    assert summary.per_type_count == {'object_rel_direction': 4, 'route_planning': 1, 'object_counting': 2}
    assert summary.kinds == {'object_rel_direction': 'MCA', 'route_planning': 'MCA', 'object_counting': 'NA'}
    assert summary.subtypes['object_rel_direction_hard'] == pytest.approx(50.0)
    assert summary.overall == pytest.approx((50 + 100 + 55) / 3)
    assert summary.missing_subtypes == {}
    assert summary.rows == 7 and summary.failed_rows == 0
    # The merged type averages subtype means, not rows: a row mean would be 2 / 4 = 50 here by
    # chance, so check with unequal counts as well.
    rows.append(vsi('object_rel_direction_easy', 'A', 'A'))  # easy still 1.0
    assert score(rows, 'vsibench').per_type['object_rel_direction'] == pytest.approx(50.0)


def test_vsibench_summary_names_missing_subtypes():
    rows = [vsi('object_rel_direction_easy', 'A', 'A'), vsi('object_rel_direction_hard', 'B', 'A')]
    summary = score(rows, 'vsibench')
    assert summary.per_type == {'object_rel_direction': 50.0}  # (100 + 0) / 2: absent parts are not 0
    assert summary.missing_subtypes == {'object_rel_direction': ['object_rel_direction_medium']}


def test_vstibench_summary_merges_nothing():
    rows = [
        dict(question_type='camera_obj_rel_dist_v1', prediction='A', ground_truth='bed', mc_answer='A'),  # 100
        dict(question_type='camera_obj_rel_dist_v2', prediction='B', ground_truth='bed', mc_answer='A'),  # 0
        dict(question_type='camera_displacement', prediction='1.1', ground_truth='1.0'),  # 0.9 (see MRA test)
    ]
    summary = score(rows, 'vstibench')
    assert summary.per_type == pytest.approx({'camera_obj_rel_dist_v1': 100.0, 'camera_obj_rel_dist_v2': 0.0,
                                              'camera_displacement': 90.0})
    assert summary.overall == pytest.approx(190.0 / 3)
    assert 'no merging' in summary.merge_rule


def test_summary_counts_failed_rows():
    rows = [vsi('object_counting', '4', '4'), vsi('object_counting', '', '4', error='NO_FRAMES: none')]
    summary = score(rows, 'vsibench')
    assert summary.per_type['object_counting'] == 50.0
    assert summary.failed_rows == 1


def test_auto_detects_the_benchmark_from_its_types():
    assert score([vsi('object_counting', '1', '1')]).benchmark == 'vsibench'
    assert detect_benchmark(['camera_displacement', 'obj_obj_relative_pos_lr']) is VSTIBENCH
    assert detect_benchmark(['route_planning']) is VSIBENCH
    with pytest.raises(ScoringError, match='mix VSI-Bench and VSTI-Bench'):
        detect_benchmark(['route_planning', 'camera_displacement'])
    with pytest.raises(ScoringError, match="unknown question type\\(s\\) 'object_colour'"):
        score([vsi('object_colour', 'A', 'A')])


def test_summary_refuses_empty_input_and_unknown_benchmarks():
    with pytest.raises(ScoringError, match='no rows'):
        score([])
    with pytest.raises(ScoringError, match="unknown benchmark 'scanqa'"):
        score([vsi('object_counting', '1', '1')], 'scanqa')
    with pytest.raises(ScoringError, match="numeric must be"):
        score([vsi('object_counting', '1', '1')], 'vsibench', numeric='fuzzy')


def test_summary_to_dict_is_plain_data():
    doc = score([vsi('object_counting', '1', '1')], 'vsibench').to_dict()
    assert doc['overall'] == 100.0 and doc['per_type'] == {'object_counting': 100.0}


# --- --scorer vlm3r (the paper's float() of the first word) vs lmms-eval (extract_number, after #1386) -------
def test_extract_number_reads_as_lmms_eval_now():
    from vlm3r_ros.eval.metrics import extract_number
    assert extract_number("2.0m") == 2.0 and extract_number("about 10") == 10.0
    assert extract_number("Three boxes.") == 3.0 and extract_number("twenty-one") == 21.0
    assert extract_number("three hundred and twenty-one") == 321.0
    assert extract_number("one apple, room 2") == 1.0  # whichever number comes first
    assert extract_number("1e3") == 1.0 and extract_number("no idea") is None and extract_number("") is None


def test_the_two_scorers_read_numeric_replies_differently():
    from vlm3r_ros.eval.metrics import score_row
    def row(prediction, gt):
        return {"question_type": "object_abs_distance", "prediction": prediction, "ground_truth": gt}
    # "2.0m" vs 3.0: float("2.0m") fails -> 0; extract_number 2.0: |2-3|/3 = 0.333 <= 1-theta for
    # theta in 0.50, 0.55, 0.60, 0.65 -> 4 of 10
    assert score_row(row("2.0m", 3.0), "vsibench") == 0.0
    assert score_row(row("2.0m", 3.0), "vsibench", scorer="lmms-eval") == pytest.approx(0.4)
    # "about 10" vs 10: first word "about" -> 0; extract_number 10 -> 1
    assert score_row(row("about 10", 10.0), "vsibench") == 0.0
    assert score_row(row("about 10", 10.0), "vsibench", scorer="lmms-eval") == 1.0
    # "1e3" vs 1000: float reads 1000 -> 1; extract_number reads 1 -> 0
    assert score_row(row("1e3", 1000.0), "vsibench") == 1.0
    assert score_row(row("1e3", 1000.0), "vsibench", scorer="lmms-eval") == 0.0
    # multiple choice: both read the first word
    mc = {"question_type": "route_planning", "prediction": "B. Turn Left", "ground_truth": "B"}
    assert score_row(mc, "vsibench") == score_row(mc, "vsibench", scorer="lmms-eval") == 1.0
    with pytest.raises(ScoringError, match="scorer must be one of"):
        score_row(row("2", 2.0), "vsibench", scorer="paper")
