"""SpatialEngine (vlm3r_ros/engine/spatial_engine.py): window, keyframes, queries, errors, threads.

No ROS. Tiny real models (seeded random CUT3R and VLM-3R at the real token layout) and the
real Qwen2 tokenizer built offline, on rendered frames; no mocks and no timing assertions.
To hold a query inside the model while the test does something else, a forward pre-hook
on the LLM (which only questions run; ingest never does) waits on a threading.Event.
"""
import dataclasses
import threading

import numpy as np
import pytest
import torch

from vlm3r_ros.engine.spatial_engine import (
    EngineConfig, EngineError, SpatialEngine)
from vlm3r_ros.engine.vlm3r_pipeline import Vlm3rPipeline
from vlm3r_ros.models.cut3r.tiny import random_cut3r
from vlm3r_ros.models.vlm.tiny import random_vlm3r
from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer
from vlm3r_ros.media import sample_scene

pytestmark = pytest.mark.usefixtures('torch_single_thread')

SIZE = (64, 48)  # (width, height): the pipeline resizes to 384 / 432 anyway
MS = 1_000_000  # ns
EVENT_TIMEOUT_S = 60.0  # bound on every wait: a broken engine fails, never hangs
QUESTION = 'How many chairs are in the room?'


@pytest.fixture(scope='module')
def models():
    return random_vlm3r(seed=0), random_cut3r('tiny_dpt', seed=0), build_qwen2_tokenizer()


@pytest.fixture(scope='module')
def pipeline(models):
    vlm, cut3r, tokenizer = models
    return Vlm3rPipeline(vlm, cut3r, tokenizer)


@pytest.fixture(scope='module')
def geometry_pipeline(models):
    vlm, cut3r, tokenizer = models
    return Vlm3rPipeline(vlm, cut3r, tokenizer, with_geometry=True)


@pytest.fixture(scope='module')
def frames():
    return sample_scene.generate_sequence(10, SIZE, seed=0)


def make_engine(pipeline, **config):
    config.setdefault('window_capacity', 16)
    config.setdefault('default_max_frames', min(4, config['window_capacity']))
    config.setdefault('default_max_new_tokens', 2)
    return SpatialEngine(pipeline, EngineConfig(**config))


def ingest_all(engine, frames, stamps_ms=None):
    stamps_ms = range(0, 100 * len(frames), 100) if stamps_ms is None else stamps_ms
    return [engine.ingest(frame, stamp * MS) for frame, stamp in zip(frames, stamps_ms)]


def stats_dict(engine):
    """Every stat but the pose tensor, for equality checks."""
    d = dataclasses.asdict(engine.stats())
    d.pop('last_c2w')
    return d


def error_code(fn, *args, **kwargs):
    with pytest.raises(EngineError) as info:
        fn(*args, **kwargs)
    assert str(info.value).startswith(info.value.code + ': ') and info.value.message
    return info.value.code


class HeldLlm:
    """Holds every question inside the LLM until released (a real forward pre-hook)."""

    def __init__(self, pipeline):
        self.entered = threading.Semaphore(0)  # one release per query that reached the LLM
        self.release = threading.Event()
        self._handle = pipeline.vlm.llm.register_forward_pre_hook(self._hook)
        self._inside = set()
        self._lock = threading.Lock()

    def _hook(self, module, args):
        me = threading.get_ident()
        with self._lock:
            first = me not in self._inside
            self._inside.add(me)
        if first:
            self.entered.release()
        if not self.release.wait(EVENT_TIMEOUT_S):
            raise RuntimeError('the test never released the held query')

    def wait_entered(self, count=1):
        for _ in range(count):
            assert self.entered.acquire(timeout=EVENT_TIMEOUT_S), 'a query never reached the LLM'

    def close(self):
        self.release.set()
        self._handle.remove()


@pytest.fixture
def held_llm(pipeline):
    held = HeldLlm(pipeline)
    try:
        yield held
    finally:
        held.close()


def run_in_thread(fn, *args, **kwargs):
    """Start fn in a thread; returns (thread, outcome) where outcome gets 'result' or 'error'."""
    outcome = {}

    def target():
        try:
            outcome['result'] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcome['error'] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def joined(thread, outcome):
    thread.join(EVENT_TIMEOUT_S)
    assert not thread.is_alive(), 'thread did not finish'
    if 'error' in outcome:
        raise outcome['error']
    return outcome['result']


# ------------------------------------------------------------------ window
def test_window_is_bounded_at_capacity(pipeline, frames):
    engine = make_engine(pipeline, window_capacity=3, default_max_frames=3)
    results = ingest_all(engine, frames[:5])
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert all(r.kept and r.segment_id == 0 for r in results)
    stats = engine.stats()
    assert (stats.window_size, stats.window_capacity, stats.frames_processed, stats.segment_frames) == (3, 3, 5, 5)
    assert stats.bytes_per_frame > 0 and stats.window_bytes == 3 * stats.bytes_per_frame
    assert stats.last_step_seconds > 0
    # The newest three frames remain: 200, 300, 400 ms.
    result = engine.query(QUESTION, max_frames=3)
    assert (result.frames_used, result.window_start_ns, result.window_end_ns) == (3, 200 * MS, 400 * MS)
    assert result.answer.frames_used == 3


def test_window_holds_only_what_it_reports(geometry_pipeline, frames):
    """A window entry's tensors own exactly their bytes: none is a view that keeps a bigger model
    output alive (CUT3R's camera token is a slice of the whole decoder output), so window_bytes
    is the window's real memory."""
    engine = make_engine(geometry_pipeline)
    ingest_all(engine, frames[:2])
    for entry in engine._window:
        f = entry.features
        for name, t in (('visual_tokens', f.visual_tokens), ('camera_token', f.camera_token), ('c2w', f.c2w)):
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), name
    assert engine.stats().bytes_per_frame == f.nbytes()


def test_keyframe_stride_keeps_every_kth_frame_but_every_frame_advances_cut3r(geometry_pipeline, frames):
    strided = make_engine(geometry_pipeline, keyframe_stride=2)
    every = make_engine(geometry_pipeline)
    only_kept = make_engine(geometry_pipeline)

    a = ingest_all(strided, frames[:5])
    b = ingest_all(every, frames[:5])
    assert [r.kept for r in a] == [True, False, True, False, True]
    assert [r.index for r in a] == [0, 1, 2, 3, 4]
    stats = strided.stats()
    assert (stats.window_size, stats.segment_frames, stats.frames_processed) == (3, 5, 5)
    result = strided.query(QUESTION, max_frames=16)
    assert (result.frames_used, result.window_start_ns, result.window_end_ns) == (3, 0, 400 * MS)

    # Skipped frames still went through CUT3R: the pose of frame 4 is the one a stride-1
    # engine computes after all five frames, not the one after frames 0, 2, 4 only.
    c = ingest_all(only_kept, [frames[0], frames[2], frames[4]], [0, 200, 400])
    for r in a + b + c:
        assert r.c2w is not None and r.c2w.shape == (4, 4) and torch.isfinite(r.c2w).all()
    for i in range(5):
        assert torch.equal(a[i].c2w, b[i].c2w), f'frame {i}'
    assert torch.equal(a[0].c2w, c[0].c2w)
    assert not torch.equal(a[4].c2w, c[2].c2w)
    assert torch.equal(strided.stats().last_c2w, a[4].c2w)


def test_points_only_on_the_frames_that_ask_for_them(geometry_pipeline, pipeline, frames):
    """With geometry, every frame has its pose; points=False skips the dense head only."""
    engine, reference = make_engine(geometry_pipeline), make_engine(geometry_pipeline)
    asks = [True, False, False, None, False]
    got = [engine.ingest(f, i * 100 * MS, points=ask) for i, (f, ask) in enumerate(zip(frames, asks))]
    full = ingest_all(reference, frames[:5])
    for ask, r, f in zip(asks, got, full):
        assert torch.equal(r.c2w, f.c2w)  # the pose never depends on the points
        if ask is False:
            assert r.points_world is None and r.confidence is None and r.colors is None
        else:
            assert torch.equal(r.points_world, f.points_world) and torch.equal(r.confidence, f.confidence)
            assert r.colors.shape == r.points_world.shape
    assert geometry_pipeline.geometry_heads() == ('pose', 'world_points')
    assert geometry_pipeline.geometry_heads(points=False) == ('pose',)
    # tokens only without geometry, whatever the frame asks for
    assert pipeline.geometry_heads(points=True) == ()
    r = make_engine(pipeline).ingest(frames[0], 0, points=True)
    assert r.c2w is None and r.points_world is None


def test_no_frames_before_any_frame(pipeline):
    engine = make_engine(pipeline)
    assert error_code(engine.query, QUESTION) == 'NO_FRAMES'
    stats = engine.stats()
    assert (stats.window_size, stats.frames_processed, stats.queries_answered) == (0, 0, 0)


def test_uniform_selection_within_window_seconds_and_max_frames(pipeline, frames):
    engine = make_engine(pipeline, window_capacity=16, default_max_frames=4)
    ingest_all(engine, frames)  # stamps 0, 100, ..., 900 ms
    tokens_per_frame = engine.query(QUESTION, max_frames=1).answer.visual_tokens

    def picks(**kwargs):
        r = engine.query(QUESTION, **kwargs)
        assert r.answer.frames_used == r.frames_used
        assert r.answer.visual_tokens == r.frames_used * tokens_per_frame  # the frames really given to the LLM
        return r.frames_used, r.window_start_ns // MS, r.window_end_ns // MS

    assert picks() == (4, 0, 900)  # node default: 4 of 10, linspace(0, 9, 4) -> 0, 3, 6, 9
    assert picks(max_frames=16) == (10, 0, 900)  # more than there are: all
    assert picks(max_frames=1) == (1, 0, 0)  # linspace(0, 9, 1) -> the oldest, as the official sampler
    # 350 ms before the newest frame (900 ms): 600..900 ms
    assert picks(window_seconds=0.35, max_frames=16) == (4, 600, 900)
    assert picks(window_seconds=0.35, max_frames=2) == (2, 600, 900)
    assert picks(window_seconds=0.05) == (1, 900, 900)  # only the newest
    assert picks(window_seconds=100.0) == (4, 0, 900)  # longer than the history: all of it


def test_selection_follows_stamps_not_arrival_spacing(pipeline, frames):
    """window_seconds is measured on the input stamps (uneven here), not on frame counts."""
    engine = make_engine(pipeline, default_max_frames=16)
    ingest_all(engine, frames[:6], [0, 10, 20, 1000, 1010, 2000])
    r = engine.query(QUESTION, window_seconds=1.0)
    assert (r.frames_used, r.window_start_ns // MS, r.window_end_ns // MS) == (3, 1000, 2000)
    r = engine.query(QUESTION, window_seconds=0.5)
    assert (r.frames_used, r.window_start_ns // MS, r.window_end_ns // MS) == (1, 2000, 2000)


# ------------------------------------------------------------------ request errors
@pytest.mark.parametrize('kwargs, code', [
    (dict(question=''), 'EMPTY_QUESTION'),
    (dict(question='   \n\t'), 'EMPTY_QUESTION'),
    (dict(question='x' * 101), 'QUESTION_TOO_LONG'),
    (dict(options=['A. one', '']), 'BAD_OPTIONS'),
    (dict(options=['A. one', '   ']), 'BAD_OPTIONS'),
    (dict(options=[f'option {i}' for i in range(27)]), 'BAD_OPTIONS'),
    (dict(answer_type='multiple_choice'), 'BAD_ANSWER_TYPE'),
    (dict(answer_type='Number'), 'BAD_ANSWER_TYPE'),
    (dict(max_frames=-1), 'BAD_MAX_FRAMES'),
    (dict(max_frames=9), 'BAD_MAX_FRAMES'),  # more than the window capacity (8)
    (dict(window_seconds=-0.5), 'BAD_WINDOW'),
    (dict(window_seconds=float('nan')), 'BAD_WINDOW'),
    (dict(window_seconds=float('inf')), 'BAD_WINDOW'),
    (dict(max_new_tokens=-1), 'BAD_MAX_NEW_TOKENS'),
    (dict(max_new_tokens=33), 'BAD_MAX_NEW_TOKENS'),  # over max_new_tokens_limit (32)
], ids=lambda v: v if isinstance(v, str) else None)
def test_request_errors(pipeline, frames, kwargs, code):
    engine = make_engine(pipeline, window_capacity=8, max_question_chars=100, max_new_tokens_limit=32)
    request = {'question': QUESTION, **kwargs}
    question = request.pop('question')
    # Checked before anything else: the same code with no frame yet and with frames.
    assert error_code(engine.query, question, **request) == code
    engine.ingest(frames[0], 0)
    assert error_code(engine.query, question, **request) == code
    stats = engine.stats()
    assert (stats.queries_answered, stats.queries_refused) == (0, 0)


def test_limits_themselves_are_accepted(pipeline, frames):
    engine = make_engine(pipeline, window_capacity=8, max_question_chars=100, max_new_tokens_limit=32)
    engine.ingest(frames[0], 0)
    r = engine.query('x' * 100, [f'{chr(65 + i)}. option {i}' for i in range(26)], answer_type='choice',
                     max_frames=8, window_seconds=0.0, max_new_tokens=1)
    assert r.frames_used == 1 and r.answer.new_tokens <= 1
    for answer_type in ('', 'auto', 'choice', 'number', 'text'):
        engine.query(QUESTION, answer_type=answer_type, max_new_tokens=1)
    assert engine.stats().queries_answered == 6


# ------------------------------------------------------------------ threads
def test_queries_beyond_the_limit_are_refused_busy_while_one_runs(pipeline, frames, held_llm):
    engine = make_engine(pipeline, max_concurrent_queries=1, query_queue_depth=0)  # no waiting room
    engine.ingest(frames[0], 0)
    running = run_in_thread(engine.query, QUESTION)
    held_llm.wait_entered()
    assert error_code(engine.query, QUESTION) == 'BUSY'  # at once, while the first is held
    assert error_code(engine.query, 'Another one?', max_new_tokens=1) == 'BUSY'
    held_llm.release.set()
    first = joined(*running)
    assert first.frames_used == 1
    assert engine.query(QUESTION).frames_used == 1  # the slot is free again
    stats = engine.stats()
    assert (stats.queries_answered, stats.queries_refused) == (2, 2)


def test_two_concurrent_queries_allowed_third_busy(pipeline, frames, held_llm):
    # no prefix cache: with it, the second question would wait for the first's prefix of the same frames
    engine = make_engine(pipeline, max_concurrent_queries=2, query_queue_depth=0, prefix_cache_mb=0)
    engine.ingest(frames[0], 0)
    threads = [run_in_thread(engine.query, QUESTION) for _ in range(2)]
    held_llm.wait_entered(2)  # both inside the LLM at the same time
    assert error_code(engine.query, QUESTION) == 'BUSY'
    held_llm.release.set()
    assert [joined(*t).frames_used for t in threads] == [1, 1]
    assert (engine.stats().queries_answered, engine.stats().queries_refused) == (2, 1)


def test_query_sees_a_consistent_snapshot_while_ingest_continues(pipeline, frames, held_llm):
    engine = make_engine(pipeline, window_capacity=3, default_max_frames=3)
    ingest_all(engine, frames[:3])  # 0, 100, 200 ms
    query = run_in_thread(engine.query, QUESTION)
    held_llm.wait_entered()  # the frames are chosen; the LLM is running

    # Ingestion goes on in another thread meanwhile, and replaces the whole window.
    ingest = run_in_thread(ingest_all, engine, frames[3:6], [300, 400, 500])
    results = joined(*ingest)  # finishes although the query is still held
    assert [r.index for r in results] == [3, 4, 5]
    stats = engine.stats()
    assert (stats.window_size, stats.frames_processed) == (3, 6)

    held_llm.release.set()
    held = joined(*query)
    assert (held.frames_used, held.window_start_ns, held.window_end_ns) == (3, 0, 200 * MS)  # its snapshot
    now = engine.query(QUESTION)
    assert (now.frames_used, now.window_start_ns, now.window_end_ns) == (3, 300 * MS, 500 * MS)


def test_a_question_waits_in_the_queue_while_one_runs_and_then_is_answered(pipeline, frames, held_llm):
    engine = make_engine(pipeline, max_concurrent_queries=1, query_queue_depth=1)
    engine.ingest(frames[0], 0)
    running = run_in_thread(engine.query, QUESTION)
    held_llm.wait_entered()
    waiting = engine.submit('How far is the door?', max_new_tokens=1)  # admitted at once
    assert error_code(engine.query, QUESTION) == 'BUSY'  # one running + one waiting: full
    stats = engine.stats().queue
    assert (stats.running, stats.waiting, stats.refused_busy) == (1, 1, 1)
    held_llm.release.set()
    assert joined(*running).frames_used == 1
    assert waiting.result(EVENT_TIMEOUT_S).frames_used == 1
    assert engine.stats().queries_answered == 2
    engine.close()


def test_reset_while_a_query_runs_does_not_disturb_it(pipeline, frames, held_llm):
    engine = make_engine(pipeline, query_queue_depth=0)
    ingest_all(engine, frames[:2])
    query = run_in_thread(engine.query, QUESTION)
    held_llm.wait_entered()
    assert engine.reset() == 1
    assert error_code(engine.query, QUESTION) == 'BUSY'  # still one running
    held_llm.release.set()
    assert joined(*query).frames_used == 2
    assert error_code(engine.query, QUESTION) == 'NO_FRAMES'  # the new segment is empty


# ------------------------------------------------------------------ segments
def test_reset_starts_a_new_segment_with_an_empty_window(geometry_pipeline, frames):
    engine = make_engine(geometry_pipeline)
    first = ingest_all(engine, frames[:3])
    assert engine.reset() == 1
    stats = engine.stats()
    assert (stats.segment_id, stats.window_size, stats.segment_frames, stats.frames_processed) == (1, 0, 0, 3)
    assert error_code(engine.query, QUESTION) == 'NO_FRAMES'
    again = ingest_all(engine, frames[:3])
    assert [(r.index, r.segment_id) for r in again] == [(0, 1), (1, 1), (2, 1)]
    # A fresh CUT3R state: the same frames give the same poses as the first segment.
    for a, b in zip(first, again):
        assert torch.equal(a.c2w, b.c2w)
    assert engine.reset() == 2 and engine.stats().segment_id == 2


def test_auto_reset_after_n_frames(pipeline, frames):
    engine = make_engine(pipeline, auto_reset_frames=3)
    results = ingest_all(engine, frames[:7])
    assert [(r.segment_id, r.index) for r in results] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    stats = engine.stats()
    assert (stats.segment_id, stats.window_size, stats.segment_frames, stats.frames_processed) == (2, 1, 1, 7)
    r = engine.query(QUESTION)
    assert (r.frames_used, r.window_start_ns, r.window_end_ns) == (1, 600 * MS, 600 * MS)


def test_config_validation():
    for bad in (dict(window_capacity=0), dict(keyframe_stride=0), dict(default_max_frames=0),
                dict(window_capacity=4, default_max_frames=5), dict(default_max_new_tokens=0),
                dict(default_max_new_tokens=300), dict(max_question_chars=0), dict(auto_reset_frames=-1),
                dict(max_concurrent_queries=0)):
        with pytest.raises(ValueError):
            EngineConfig(**bad).validate()


# ------------------------------------------------------------------ images
@pytest.mark.parametrize('bad', [
    np.zeros((0, 0, 3), np.uint8),
    np.zeros((48, 64), np.uint8),  # no channel axis
    np.zeros((48, 64, 4), np.uint8),  # RGBA: decode with vlm3r_ros.ros.image_encodings first
    np.zeros((48, 64, 3), np.float32),
    np.zeros((48, 64, 3), np.uint16),
    'not an image',
], ids=['empty', '2d', 'rgba', 'float32', 'uint16', 'str'])
def test_bad_image_into_ingest_is_bad_image_and_changes_nothing(pipeline, frames, bad):
    engine = make_engine(pipeline)
    engine.ingest(frames[0], 0)
    before = stats_dict(engine)
    assert error_code(engine.ingest, bad, 100 * MS) == 'BAD_IMAGE'
    assert stats_dict(engine) == before
    r = engine.ingest(frames[1], 200 * MS)
    assert (r.index, r.segment_id) == (1, 0)  # the next good frame follows on
    assert engine.stats().frames_processed == 2
