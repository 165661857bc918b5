"""Vlm3rPipeline end to end on real tiny models: frames -> CUT3R + SigLIP -> tokens -> an answer.

Tiny random CUT3R (``tiny_dpt``, decoder width 32) + tiny random VLM-3R (``TINY_VLM3R``: real
27x27 grid, pooling and newline layout) + the real Qwen2 tokenizer built offline, on rendered
frames. Answers are meaningless (nothing is trained); the tests check token counts, the
sampling, streaming order, equivalence of the two entry points and the errors. No mocks,
no timing assertions.
"""
import dataclasses

import numpy as np
import pytest
import torch

from vlm3r_ros.engine.vlm3r_pipeline import (FrameFeatures, Vlm3rAnswer, Vlm3rPipeline,
                                             uniform_frame_indices)
from vlm3r_ros.models.cut3r.processing import ImageFormatError
from vlm3r_ros.models.cut3r.tiny import TINY_CONFIGS, random_cut3r
from vlm3r_ros.models.vlm.answers import ParsedAnswer
from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rInputError
from vlm3r_ros.models.vlm.prompting import PromptError, build_prompt, tokenize_with_image
from vlm3r_ros.models.vlm.tiny import TINY_VLM3R, random_vlm3r
from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer
from vlm3r_ros.media.sample_scene import generate_sequence

pytestmark = pytest.mark.usefixtures('torch_single_thread')

SIZE = (128, 96)  # (width, height) of the rendered frames
QUESTION = 'How many chairs are in the room?'
OPTIONS = ['A. one', 'B. two', 'C. three', 'D. four']


@pytest.fixture(scope='module')
def tokenizer():
    return build_qwen2_tokenizer()


@pytest.fixture(scope='module')
def vlm():
    return random_vlm3r(TINY_VLM3R, seed=0)


@pytest.fixture(scope='module')
def cut3r():
    return random_cut3r('tiny_dpt', seed=0)


@pytest.fixture(scope='module')
def pipeline(vlm, cut3r, tokenizer):
    return Vlm3rPipeline(vlm, cut3r, tokenizer)


@pytest.fixture(scope='module')
def frames():
    return generate_sequence(5, SIZE, seed=0)


@pytest.fixture(scope='module')
def features(pipeline, frames):
    """The first three frames ingested in order on one stream."""
    stream = pipeline.new_stream()
    return [pipeline.ingest(image, stream) for image in frames[:3]]


def text_token_count(tokenizer, question, options=None):
    return sum(1 for i in tokenize_with_image(build_prompt(question, options), tokenizer) if i >= 0)


# ------------------------------------------------------------------ end to end
def test_ingest_gives_pooled_tokens_and_the_camera_token(features):
    g = TINY_VLM3R.pooled_grid  # 14 with bilinear pooling of the 27x27 grid
    for f in features:
        assert isinstance(f, FrameFeatures)
        assert f.visual_tokens.shape == (g * g, TINY_VLM3R.llm.hidden_size)
        assert f.camera_token.shape == (1, TINY_VLM3R.spatial_dim)
        assert bool(torch.isfinite(f.visual_tokens).all())
        assert f.c2w is None and f.ingest_seconds > 0  # with_geometry=False: no heads


@pytest.mark.parametrize('options', [None, OPTIONS], ids=['open', 'multiple_choice'])
def test_answer_end_to_end_counts_tokens(pipeline, tokenizer, features, options):
    ans = pipeline.answer(features, QUESTION, options, max_new_tokens=4)
    assert isinstance(ans, Vlm3rAnswer)
    assert isinstance(ans.text, str) and ans.text == ans.text.strip()
    assert isinstance(ans.parsed, ParsedAnswer) and ans.parsed.raw == ans.text
    if options:
        assert ans.parsed.choice in ('', 'A', 'B', 'C', 'D') and not ans.parsed.has_value
    assert ans.frames_used == 3
    assert TINY_VLM3R.tokens_per_frame == 210  # bilinear pooling 14x14 + one newline per row
    assert ans.visual_tokens == 3 * 210
    assert ans.prompt_tokens == text_token_count(tokenizer, QUESTION, options) + ans.visual_tokens
    assert ans.prompt == build_prompt(QUESTION, options)
    assert 0 <= ans.new_tokens <= 4
    assert ans.latency_s > 0


def test_average_pooling_gives_182_tokens_per_frame(cut3r, tokenizer, frames):
    config = TINY_VLM3R.replace(pool_mode='average')
    assert config.tokens_per_frame == 182 == 13 * 14
    pipe = Vlm3rPipeline(random_vlm3r(config, seed=0), cut3r, tokenizer)
    ans = pipe.answer_video(frames[:2], QUESTION, max_new_tokens=1)
    assert ans.visual_tokens == 2 * 182
    assert ans.prompt_tokens == text_token_count(tokenizer, QUESTION) + 2 * 182


def test_frames_as_a_tensor_or_a_list_give_the_same_answer(pipeline, features):
    from_list = pipeline.answer(features, QUESTION, max_new_tokens=3)
    from_tensor = pipeline.answer(torch.stack([f.visual_tokens for f in features]), QUESTION, max_new_tokens=3)
    assert (from_list.text, from_list.prompt_tokens, from_list.new_tokens) == \
        (from_tensor.text, from_tensor.prompt_tokens, from_tensor.new_tokens)


def test_ingest_then_answer_equals_answer_video(pipeline, tokenizer, frames):
    num = 3
    indices = uniform_frame_indices(len(frames), num)
    assert indices == [0, 2, 4]
    stream = pipeline.new_stream()
    feats = [pipeline.ingest(frames[i], stream) for i in indices]
    calls = []
    by_video = pipeline.answer_video(frames, QUESTION, OPTIONS, num_frames=num, max_new_tokens=5,
                                     progress=lambda done, total: calls.append((done, total)))
    by_hand = pipeline.answer(feats, QUESTION, OPTIONS, max_new_tokens=5)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert (by_video.text, by_video.parsed, by_video.frames_used, by_video.prompt_tokens, by_video.visual_tokens,
            by_video.new_tokens) == (by_hand.text, by_hand.parsed, by_hand.frames_used, by_hand.prompt_tokens,
                                     by_hand.visual_tokens, by_hand.new_tokens)
    # the same generated token ids, not just the same text
    ids = tokenize_with_image(build_prompt(QUESTION, OPTIONS), tokenizer)
    pooled = torch.stack([f.visual_tokens for f in feats])
    again = pipeline.vlm.generate(ids, pooled, max_new_tokens=5, stop_token_ids=pipeline.stop_ids)
    assert again.prompt_tokens == by_video.prompt_tokens and len(again.token_ids) == by_video.new_tokens
    assert tokenizer.decode(again.token_ids, skip_special_tokens=True).strip() == by_video.text


# ------------------------------------------------------------------ sampling
@pytest.mark.parametrize('total', [1, 2, 5, 31, 32, 33, 64, 100, 1000, 12345])
@pytest.mark.parametrize('num', [32, 8, 1])
def test_uniform_frame_indices_are_numpy_linspace(total, num):
    got = uniform_frame_indices(total, num)
    assert got == np.linspace(0, total - 1, min(total, num), dtype=int).tolist()
    assert len(got) == min(total, num) and all(isinstance(i, int) for i in got)
    assert all(b > a for a, b in zip(got, got[1:])), 'indices must be unique and increasing'
    assert got[0] == 0 and 0 <= got[-1] <= total - 1
    if min(total, num) > 1:
        assert got[-1] == total - 1  # linspace always includes the last frame


def test_uniform_frame_indices_edge_cases():
    assert uniform_frame_indices(1) == [0]
    assert uniform_frame_indices(7) == list(range(7))  # fewer than 32 frames: every frame
    assert uniform_frame_indices(32) == list(range(32))
    assert uniform_frame_indices(0) == [] and uniform_frame_indices(-3) == []
    assert uniform_frame_indices(100)[:4] == [0, 3, 6, 9]  # int() truncates 3.19..., 6.38..., 9.58...


# ------------------------------------------------------------------ streaming
def test_frame_features_do_not_depend_on_later_frames(pipeline, frames):
    def run(order):
        stream = pipeline.new_stream()
        return [pipeline.ingest(frames[i], stream) for i in order]

    a, b = run([0, 1, 2]), run([0, 1, 4])
    for fa, fb in zip(a[:2], b[:2]):
        assert torch.equal(fa.visual_tokens, fb.visual_tokens) and torch.equal(fa.camera_token, fb.camera_token)
    assert not torch.equal(a[2].visual_tokens, b[2].visual_tokens)  # different frames


def test_frame_features_depend_on_earlier_frames(pipeline, frames):
    """CUT3R's recurrent state carries over: the same frame gives other tokens after another history."""
    def last(order):
        stream = pipeline.new_stream()
        return [pipeline.ingest(frames[i], stream) for i in order][-1]

    fresh, after_two, after_other = last([2]), last([0, 1, 2]), last([4, 3, 2])
    for other in (after_two, after_other):
        assert not torch.allclose(fresh.visual_tokens, other.visual_tokens, atol=1e-6)
        assert not torch.allclose(fresh.camera_token, other.camera_token, atol=1e-6)
    assert not torch.allclose(after_two.visual_tokens, after_other.visual_tokens, atol=1e-6)
    again = last([0, 1, 2])
    assert torch.equal(again.visual_tokens, after_two.visual_tokens)  # deterministic


def test_a_bad_frame_leaves_the_stream_unchanged(pipeline, frames):
    stream = pipeline.new_stream()
    first = pipeline.ingest(frames[0], stream)
    with pytest.raises(ImageFormatError):
        pipeline.ingest(np.zeros((8, 8), dtype=np.uint8), stream)  # not RGB
    second = pipeline.ingest(frames[1], stream)
    clean = pipeline.new_stream()
    pipeline.ingest(frames[0], clean)
    assert torch.equal(second.visual_tokens, pipeline.ingest(frames[1], clean).visual_tokens)
    assert first.visual_tokens.shape == second.visual_tokens.shape


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize('question', ['', '   \n'])
def test_empty_question_is_refused(pipeline, features, question):
    with pytest.raises(PromptError, match='EMPTY_QUESTION'):
        pipeline.answer(features, question)


def test_options_without_question_are_refused(pipeline, features):
    with pytest.raises(PromptError, match='OPTIONS_WITHOUT_QUESTION'):
        pipeline.answer(features, '', OPTIONS)


def test_no_frames_is_refused(pipeline):
    with pytest.raises(Vlm3rInputError, match='no frames'):
        pipeline.answer([], QUESTION)
    with pytest.raises(Vlm3rInputError, match='no frames'):
        pipeline.answer_video([], QUESTION)


def test_max_new_tokens_below_one_is_refused(pipeline, features):
    with pytest.raises(Vlm3rInputError, match='max_new_tokens'):
        pipeline.answer(features, QUESTION, max_new_tokens=0)


def test_more_frames_than_the_context_holds_is_refused(cut3r, tokenizer, features):
    small = Vlm3rPipeline(random_vlm3r(TINY_VLM3R.replace(max_context_tokens=500), seed=0), cut3r, tokenizer)
    ans = small.answer(features[:2], QUESTION, max_new_tokens=2)  # 2 x 210 + text + 2 fits
    assert ans.visual_tokens == 420
    with pytest.raises(Vlm3rInputError, match=r'630 visual.*500-token context.*fewer frames'):
        small.answer(features, QUESTION, max_new_tokens=2)  # 3 x 210 = 630 > 500


def test_mismatched_cut3r_and_vlm_widths_are_refused(vlm, tokenizer):
    wide = random_cut3r(dataclasses.replace(TINY_CONFIGS['tiny_dpt'], dec_embed_dim=48), seed=0)
    with pytest.raises(ValueError, match=r'48 wide.*expects 32.*mismatched'):
        Vlm3rPipeline(vlm, wide, tokenizer)
