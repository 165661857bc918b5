"""Visual-prefix KV cache: frame selection, the cache itself, and answers with and without it.

Real tiny models (seeded random VLM-3R at the real token layout, float32) and the real Qwen2
tokenizer built offline. The reference decoder below is a plain greedy loop over the LLM's
forward (what Vlm3rModel.generate did before it used transformers' generate): every path
must give its tokens exactly. No mocks, no timing assertions.
"""
import threading

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from vlm3r_ros.engine.prefix_cache import PrefixCache, PrefixKey, select_positions
from vlm3r_ros.engine.spatial_engine import EngineConfig, SpatialEngine
from vlm3r_ros.engine.vlm3r_pipeline import Vlm3rPipeline
from vlm3r_ros.media import sample_scene
from vlm3r_ros.models.cut3r.tiny import random_cut3r
from vlm3r_ros.models.vlm.prompting import build_prompt, tokenize_with_image
from vlm3r_ros.models.vlm.tiny import TINY_VLM3R, random_vlm3r
from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer

pytestmark = pytest.mark.usefixtures('torch_single_thread')

QUESTION = 'How many chairs are in the room?'
N_NEW = 10
WAIT_S = 60.0


@pytest.fixture(scope='module')
def tokenizer():
    return build_qwen2_tokenizer()


@pytest.fixture(scope='module')
def vlm():
    return random_vlm3r(seed=0)


@pytest.fixture(scope='module')
def pooled():
    torch.manual_seed(1)
    return torch.randn(5, 14 * 14, TINY_VLM3R.llm.hidden_size)  # 5 frames pooled to 14x14 (27x27, bilinear /2)


def prompt_ids(tokenizer, question=QUESTION, options=None):
    return tokenize_with_image(build_prompt(question, options), tokenizer)


def head_of(ids):
    return ids[:ids.index(-200)]


@torch.inference_mode()
def reference_greedy(vlm, ids, pooled, n):
    """Greedy decoding written out: one prefill of the whole prompt, then one token at a time."""
    embeds = vlm.splice(ids, vlm.visual_sequence(pooled))
    cache = DynamicCache(config=vlm.llm.config)
    out = vlm.llm(inputs_embeds=embeds[None], cache=cache, use_cache=True)
    tokens = [int(out.logits[0, -1].argmax())]
    while len(tokens) < n:
        out = vlm.llm(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


def cache_tensors(prefix):
    return [(layer.keys.clone(), layer.values.clone()) for layer in prefix.cache.layers]


# ------------------------------------------------------------------ frame selection
def test_uniform_selection_is_the_official_linspace():
    for total, num in ((10, 4), (33, 32), (3, 8), (256, 32)):
        assert select_positions(list(range(total)), num) == np.linspace(0, total - 1, min(total, num),
                                                                         dtype=int).tolist()


def test_keyframes_hand_worked():
    # 10 frames, at most 4: stride 1 -> 10, stride 2 -> 5, stride 4 -> indices 0, 4, 8
    assert select_positions(list(range(10)), 4, 'keyframes') == [0, 4, 8]
    # positions, not indices: a window that starts at frame 6
    assert select_positions(list(range(6, 16)), 4, 'keyframes') == [2, 6]  # indices 8 and 12
    assert select_positions(list(range(3)), 4, 'keyframes') == [0, 1, 2]
    with pytest.raises(ValueError, match='uniform'):
        select_positions([0, 1], 2, 'random')


def test_keyframes_grow_by_appending_except_at_a_stride_doubling():
    max_frames, previous, unchanged, appends, rebuilds = 8, [0], 0, 0, 0
    for n in range(2, 200):
        picks = select_positions(list(range(n)), max_frames, 'keyframes')
        assert max_frames // 2 <= len(picks) <= max_frames or n < max_frames
        if picks == previous:
            unchanged += 1  # the cached prefix is still the one
        elif picks == previous + [n - 1]:
            appends += 1  # the newest frame became a keyframe: the prefix is extended by one frame
        else:
            rebuilds += 1  # the stride doubled: every other pick kept
            assert picks in (previous[::2], previous[::2] + [n - 1])
        previous = picks
    assert rebuilds == 5  # stride 2, 4, 8, 16, 32 at the 9th, 17th, 33rd, 65th, 129th frame
    assert unchanged + appends + rebuilds == 198 and unchanged > 5 * appends


# ------------------------------------------------------------------ the model's prefix path
def test_generate_equals_the_plain_greedy_loop(vlm, tokenizer, pooled):
    ids = prompt_ids(tokenizer)
    gen = vlm.generate(ids, pooled, max_new_tokens=N_NEW)  # no stop ids: all N_NEW tokens
    assert gen.token_ids == reference_greedy(vlm, ids, pooled, N_NEW)
    assert gen.prefilled_tokens == gen.prompt_tokens


def test_answers_token_for_token_identical_with_the_cached_prefix(vlm, tokenizer, pooled):
    prefix = vlm.prefill_prefix(head_of(prompt_ids(tokenizer)), pooled)
    before = cache_tensors(prefix)
    for question, options in ((QUESTION, None), ('Which is closer?', ['A. chair', 'B. table'])):
        ids = prompt_ids(tokenizer, question, options)
        cold = vlm.generate(ids, pooled, max_new_tokens=N_NEW)
        warm = vlm.generate(ids, pooled, max_new_tokens=N_NEW, prefix=prefix)
        assert warm.token_ids == cold.token_ids == reference_greedy(vlm, ids, pooled, N_NEW)
        # only the question and the assistant header were prefilled
        assert warm.prefilled_tokens == len(ids) - 1 - len(head_of(ids)) < cold.prefilled_tokens
        assert warm.prompt_tokens == cold.prompt_tokens == prefix.length + warm.prefilled_tokens
    # the prefix is read-only: its tensors are what they were
    assert all(torch.equal(a, layer.keys) and torch.equal(b, layer.values)
               for (a, b), layer in zip(before, prefix.cache.layers))


@pytest.mark.parametrize('newline_mode', ['grid', 'one_token'])
def test_extended_prefix_equals_one_computed_from_scratch(tokenizer, newline_mode, pooled):
    vlm = random_vlm3r(TINY_VLM3R.replace(newline_mode=newline_mode), seed=0)
    ids = prompt_ids(tokenizer)
    head = head_of(ids)
    base = vlm.prefill_prefix(head, pooled[:3])
    before = cache_tensors(base)
    extended = vlm.prefill_prefix(head, pooled, base)
    scratch = vlm.prefill_prefix(head, pooled)
    assert extended.length == scratch.length and extended.frames == 5
    # only the two new frames' tokens (plus the final newline in one_token mode) were run
    assert extended.computed_tokens == scratch.length - len(head) - 3 * TINY_VLM3R.replace(
        newline_mode=newline_mode).tokens_per_frame
    for a, b in zip(extended.cache.layers, scratch.cache.layers):
        torch.testing.assert_close(a.keys, b.keys, rtol=1e-5, atol=1e-5)
    assert vlm.generate(ids, pooled, max_new_tokens=N_NEW, prefix=extended).token_ids == \
        reference_greedy(vlm, ids, pooled, N_NEW)
    assert all(torch.equal(a, layer.keys) for (a, _), layer in zip(before, base.cache.layers))


def test_a_prefix_of_other_frames_is_refused(vlm, tokenizer, pooled):
    ids = prompt_ids(tokenizer)
    prefix = vlm.prefill_prefix(head_of(ids), pooled[:2])
    with pytest.raises(ValueError, match='other frames'):
        vlm.generate(ids, pooled, max_new_tokens=2, prefix=prefix)


def test_stop_event_stops_after_the_step_in_progress(vlm, tokenizer, pooled):
    from transformers.generation.streamers import BaseStreamer

    stop, seen = threading.Event(), []

    class StopAfterThree(BaseStreamer):
        def put(self, value):
            seen.append(value)
            if len(seen) == 4:  # the prompt, then three tokens
                stop.set()

        def end(self):
            pass

    gen = vlm.generate(prompt_ids(tokenizer), pooled, max_new_tokens=N_NEW, streamer=StopAfterThree(),
                       stop_event=stop)
    # the event came with the third token; the step already under way may add one more, no more
    assert len(gen.token_ids) in (3, 4) and not gen.stopped


# ------------------------------------------------------------------ PrefixCache
class Blob:
    def __init__(self, size, base=None):
        self.size, self.base = size, base


def test_cache_hits_extends_and_evicts_least_recently_used():
    cache, built = PrefixCache(max_bytes=250), []

    def get(frames):
        key = PrefixKey(0, tuple(frames), 'float32', 'test')
        return cache.get(key, lambda base: built.append((frames, base)) or Blob(100, base), lambda b: b.size)

    a, how = get([0, 1])
    assert how == 'miss' and built == [([0, 1], None)]
    assert get([0, 1]) == (a, 'hit')
    b, how = get([0, 1, 2])
    assert how == 'extended' and b.base is a  # built on the cached shorter prefix
    get([5, 6])  # third entry: 300 bytes > 250, the least recently used ([0, 1]) goes
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses, stats.extensions, stats.evictions) == \
        (2, 200, 1, 2, 1, 1)
    assert get([0, 1])[1] == 'miss'
    # another segment, dtype or backend never matches
    assert not PrefixKey(1, (0, 1, 2), 'float32', 'test').extends(PrefixKey(0, (0, 1), 'float32', 'test'))
    assert not PrefixKey(0, (0, 1, 2), 'float16', 'test').extends(PrefixKey(0, (0, 1), 'float32', 'test'))
    cache.retain(lambda key: key.frames != (0, 1))
    assert cache.stats().entries == 1


def test_too_big_is_used_not_kept_and_zero_disables():
    cache = PrefixCache(max_bytes=50)
    key = PrefixKey(0, (0,), 'float32', 'test')
    assert cache.get(key, lambda base: Blob(100), lambda b: b.size)[1] == 'miss'
    assert cache.stats().entries == 0
    off = PrefixCache(0)
    assert not off.enabled and off.get(key, lambda base: Blob(1), lambda b: b.size)[1] == 'miss'


def test_threads_asking_for_the_same_prefix_compute_it_once():
    cache, calls, gate = PrefixCache(1000), [], threading.Event()
    key = PrefixKey(0, (0, 1), 'float32', 'test')

    def build(base):
        calls.append(1)
        gate.wait(WAIT_S)
        return Blob(10)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(key, build, lambda b: b.size)))
               for _ in range(3)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(WAIT_S)
    assert len(calls) == 1 and sorted(how for _, how in results) == ['hit', 'hit', 'miss']
    assert len({id(p) for p, _ in results}) == 1


# ------------------------------------------------------------------ the engine
@pytest.fixture(scope='module')
def pipeline(vlm, tokenizer):
    return Vlm3rPipeline(vlm, random_cut3r('tiny_dpt', seed=0), tokenizer)


@pytest.fixture(scope='module')
def frames():
    return sample_scene.generate_sequence(6, (64, 48), seed=0)


def engine_with(pipeline, frames, **config):
    config = dict(dict(window_capacity=16, default_max_frames=4, default_max_new_tokens=6), **config)
    engine = SpatialEngine(pipeline, EngineConfig(**config))
    for i, frame in enumerate(frames):
        engine.ingest(frame, i * 100_000_000)
    return engine


def test_queued_questions_over_one_window_share_one_prefix_and_answer_as_without_cache(pipeline, frames):
    questions = [QUESTION, 'How far is the door?', QUESTION]
    cached = engine_with(pipeline, frames)
    uncached = engine_with(pipeline, frames, prefix_cache_mb=0)
    try:
        tickets = [cached.submit(q) for q in questions]  # queued behind each other (one worker)
        with_cache = [t.result(WAIT_S).answer for t in tickets]
        without = [uncached.query(q).answer for q in questions]
        assert [a.text for a in with_cache] == [a.text for a in without]
        stats = cached.stats().prefix_cache
        assert (stats.misses, stats.hits, stats.entries) == (1, 2, 1) and stats.bytes > 0
        assert with_cache[1].prefilled_tokens < without[1].prefilled_tokens
        assert uncached.stats().prefix_cache.entries == 0
        # a reset forgets the old segment's prefixes
        cached.reset()
        assert cached.stats().prefix_cache.entries == 0
    finally:
        cached.close(), uncached.close()


def test_keyframes_selection_extends_the_prefix_as_frames_arrive(pipeline, frames):
    engine = engine_with(pipeline, frames[:3], frame_selection='keyframes', default_max_frames=8)
    try:
        first = engine.query(QUESTION)
        engine.ingest(frames[3], 300_000_000)
        second = engine.query(QUESTION)
        assert (first.frames_used, second.frames_used) == (3, 4)
        stats = engine.stats().prefix_cache
        assert (stats.misses, stats.extensions) == (1, 1)
    finally:
        engine.close()


def test_background_prefetch_extends_the_prefix_and_answers_token_for_token_as_a_cold_prefill(pipeline, frames):
    """prefix_prefetch: each new keyframe extends the cached prefix with no question asked; the question
    after it only prefills its own text, and its tokens are those of a cold prefill without any cache."""
    config = dict(frame_selection='keyframes', default_max_frames=8)
    engine = SpatialEngine(pipeline, EngineConfig(**dict(dict(window_capacity=16, default_max_new_tokens=6),
                                                         prefix_prefetch=True, **config)))
    cold = engine_with(pipeline, frames[:4], prefix_cache_mb=0, **config)
    try:
        for i, frame in enumerate(frames[:4]):
            engine.ingest(frame, i * 100_000_000)
            assert engine.wait_prefetched(WAIT_S)
        stats = engine.stats()
        assert (stats.prefix_cache.misses, stats.prefix_cache.extensions, stats.prefix_cache.hits) == (1, 3, 0)
        assert (stats.prefix_prefetches, stats.prefix_prefetch_failures) == (4, 0)

        ids = {}
        warm = engine.submit(QUESTION, on_token=lambda t, _text: ids.__setitem__('warm', t)).result(WAIT_S).answer
        unc = cold.submit(QUESTION, on_token=lambda t, _text: ids.__setitem__('cold', t)).result(WAIT_S).answer
        assert ids['warm'] == ids['cold'] and len(ids['warm']) > 0 and warm.text == unc.text
        assert engine.stats().prefix_cache.hits == 1  # the background's prefix, nothing recomputed
        # the four frames' visual tokens came from the background's prefix, not from this question
        assert warm.prefilled_tokens + 4 * pipeline.vlm.config.tokens_per_frame <= unc.prefilled_tokens
    finally:
        engine.close(), cold.close()


def test_a_failed_prefetch_is_counted_with_its_reason_and_the_question_still_answers(pipeline, frames, monkeypatch,
                                                                                      caplog):
    engine = SpatialEngine(pipeline, EngineConfig(window_capacity=16, default_max_new_tokens=6, default_max_frames=8,
                                                  frame_selection='keyframes', prefix_prefetch=True))
    build = pipeline.build_prefix

    def broken(*args, **kwargs):
        raise RuntimeError('out of memory (test)')

    try:
        monkeypatch.setattr(pipeline, 'build_prefix', broken)
        engine.ingest(frames[0], 0)
        assert engine.wait_prefetched(WAIT_S)
        stats = engine.stats()
        assert (stats.prefix_prefetches, stats.prefix_prefetch_failures) == (0, 1)
        assert stats.prefix_prefetch_error == 'RuntimeError: out of memory (test)'
        assert 'background prefix prefetch failed' in caplog.text and 'out of memory (test)' in caplog.text
        monkeypatch.setattr(pipeline, 'build_prefix', build)
        assert engine.query(QUESTION).frames_used == 1
    finally:
        engine.close()


def test_prefetch_is_off_by_default_and_only_for_keyframes(pipeline, frames):
    for config in (dict(), dict(prefix_prefetch=True), dict(frame_selection='keyframes')):
        engine = engine_with(pipeline, frames[:2], **config)
        try:
            assert engine.wait_prefetched(0)
            stats = engine.stats()
            assert stats.prefix_prefetches == 0 and stats.prefix_cache.misses == 0
        finally:
            engine.close()


def test_cancel_mid_generation_stops_within_one_token_and_frees_the_slot(pipeline, frames):
    engine = engine_with(pipeline, frames, query_queue_depth=0)
    tokens_seen, holder, ready = [], {}, threading.Event()

    def on_token(ids, text):
        tokens_seen.append(len(ids))
        if len(ids) == 2:
            assert ready.wait(WAIT_S)
            holder['ticket'].cancel()

    try:
        ticket = engine.submit(QUESTION, max_new_tokens=20, on_token=on_token)
        holder['ticket'] = ticket
        ready.set()
        with pytest.raises(Exception) as info:
            ticket.result(WAIT_S)
        assert getattr(info.value, 'code', None) == 'CANCELLED'
        assert max(tokens_seen) <= 3  # the step in progress may finish; no more
        assert engine.query(QUESTION).answer.new_tokens >= 0  # the slot is free again
        queue = engine.stats().queue
        assert (queue.cancelled, queue.succeeded, queue.running, queue.waiting) == (1, 1, 0, 0)
    finally:
        engine.close()


def test_prefixes_of_frames_that_left_the_window_are_freed(pipeline, frames):
    engine = engine_with(pipeline, frames[:3], window_capacity=3, default_max_frames=3)
    try:
        engine.query(QUESTION)
        assert engine.stats().prefix_cache.entries == 1
        engine.ingest(frames[3], 300_000_000)  # frame 0 leaves the window: that prefix is useless now
        engine.query(QUESTION)
        stats = engine.stats().prefix_cache
        assert (stats.entries, stats.misses) == (1, 2)
    finally:
        engine.close()
