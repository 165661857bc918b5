"""PointsSchedule: which frames run CUT3R's dense world-points head (node parameters
points_period and points_every_n_frames)."""
import pytest

from vlm3r_ros.engine.points_schedule import PointsSchedule

MS = 1_000_000


def run(schedule, stamps_ms, period_s=0.0, every_n=1):
    """The stamps (ms) whose frame computes points, recording each decision as the node does."""
    chosen = []
    for t in stamps_ms:
        due = schedule.due(t * MS, period_s, every_n)
        schedule.record(t * MS, due)
        if due:
            chosen.append(t)
    return chosen


def test_defaults_compute_points_on_every_frame():
    assert run(PointsSchedule(), [0, 250, 500, 750]) == [0, 250, 500, 750]


def test_a_one_second_period_at_4_hz_is_every_fourth_frame():
    stamps = list(range(0, 3000, 250))  # 4 Hz for 3 s
    assert run(PointsSchedule(), stamps, period_s=1.0) == [0, 1000, 2000]


def test_the_period_counts_stamp_time_not_frames():
    # frames processed late and irregularly: the gap since the last cloud decides
    assert run(PointsSchedule(), [0, 400, 900, 1100, 1500, 2150], period_s=1.0) == [0, 1100, 2150]


def test_every_n_frames():
    assert run(PointsSchedule(), range(10), every_n=3) == [0, 3, 6, 9]


def test_both_limits_must_hold():
    # every 2nd frame AND 1 s apart: at 4 Hz the period decides; at 0.5 Hz the frame count does
    assert run(PointsSchedule(), range(0, 3000, 250), period_s=1.0, every_n=2) == [0, 1000, 2000]
    assert run(PointsSchedule(), range(0, 10000, 2000), period_s=1.0, every_n=2) == [0, 4000, 8000]


def test_frames_without_points_because_publishing_was_off_still_count():
    s = PointsSchedule()
    assert s.due(0, 0.0, 3)
    s.record(0, True)
    for t in (1, 2):
        s.record(t * MS, False)  # e.g. publish_points was false: no cloud, but the frame passed
    assert s.due(3 * MS, 0.0, 3)


def test_time_going_back_or_reset_gives_points_at_once():
    s = PointsSchedule()
    assert run(s, [5000, 5250], period_s=1.0) == [5000]
    assert s.due(100 * MS, 1.0, 1)  # stamps restarted (a new segment after ~/reset)
    s.reset()
    assert s.due(5300 * MS, 1.0, 1)


@pytest.mark.parametrize('period_s, every_n', [(-1.0, 1), (0.0, 0)])
def test_bad_settings_are_refused(period_s, every_n):
    with pytest.raises(ValueError, match='every_n_frames must be >= 1 and period_s >= 0'):
        PointsSchedule().due(0, period_s, every_n)
