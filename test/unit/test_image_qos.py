"""vlm3r_ros.ros.image_qos: the camera subscription's reliability, without DDS.

The DDS behaviour (a stock camera publisher in its own process, frames counted) is in
test/integration/test_image_qos_dds.py.
"""
import pytest
from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy

from vlm3r_ros.ros import image_qos

RELIABLE, BEST_EFFORT = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT


@pytest.mark.parametrize('publishers, expected, reason', [
    ([], BEST_EFFORT, 'no publisher yet'),
    ([RELIABLE], RELIABLE, 'the publisher offers reliable'),
    ([RELIABLE, RELIABLE], RELIABLE, 'all 2 publishers offer reliable'),
    ([BEST_EFFORT], BEST_EFFORT, 'the publisher offers best effort'),
    ([RELIABLE, BEST_EFFORT, RELIABLE], BEST_EFFORT, '1 of 3 publishers offer best effort'),
], ids=['none', 'one-reliable', 'all-reliable', 'one-best-effort', 'mixed'])
def test_auto_follows_the_publishers(publishers, expected, reason):
    choice = image_qos.choose('auto', publishers)
    assert choice.reliability == expected
    assert choice.reason.startswith('auto: ') and reason in choice.reason
    assert choice.label == ('reliable' if expected == RELIABLE else 'best_effort')


@pytest.mark.parametrize('setting, expected', [('reliable', RELIABLE), ('best_effort', BEST_EFFORT)])
def test_explicit_choices_ignore_the_publishers(setting, expected):
    for publishers in ([], [RELIABLE], [BEST_EFFORT]):
        choice = image_qos.choose(setting, publishers)
        assert choice.reliability == expected and setting in choice.reason


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match='one of auto, reliable, best_effort'):
        image_qos.choose('sometimes', [])


def test_subscription_profile():
    qos = image_qos.subscription_qos(image_qos.choose('auto', [RELIABLE]), depth=3)
    assert (qos.depth, qos.history, qos.reliability, qos.durability) == (
        3, HistoryPolicy.KEEP_LAST, RELIABLE, DurabilityPolicy.VOLATILE)


def test_lost_frames_advice_names_the_fix_for_best_effort():
    advice = image_qos.lost_frames_advice(38, image_qos.choose('auto', [BEST_EFFORT]))
    assert advice.startswith('38 image(s) lost in transport')
    assert 'publish reliably' in advice and 'fastdds_large_data.xml' in advice
    assert 'reliable subscription' in image_qos.lost_frames_advice(1, image_qos.choose('reliable', []))
