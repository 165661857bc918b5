"""Stream semantics of CUT3R on tiny random models: update, reset, batching, state size,
history, input validation (nothing changes on a refused frame), dtypes, shapes and heads."""
import copy

import numpy as np
import pytest
import torch

from vlm3r_ros.engine.checkpoint import build_cut3r
from vlm3r_ros.engine.cut3r_stream import Cut3rStream
from vlm3r_ros.models.cut3r import Cut3rInputError
from vlm3r_ros.models.cut3r.processing import ImageFormatError
from vlm3r_ros.models.cut3r.tiny import random_cut3r

pytestmark = pytest.mark.usefixtures('torch_single_thread')

HW = (48, 64)  # small frames keep every test fast; any multiple of 16 works


@pytest.fixture(scope='module')
def model():
    return random_cut3r('tiny_dpt', seed=11)


@pytest.fixture(scope='module')
def linear_model():
    return random_cut3r('tiny_linear', seed=12)


def rand_frames(n, batch=1, hw=HW, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, batch, 3, *hw, generator=gen) * 2 - 1  # (T, B, 3, H, W)


def assert_state_equal(a, b):
    assert torch.equal(a.state_feat, b.state_feat)
    assert torch.equal(a.mem, b.mem)


def run(model, frames, **kwargs):
    """Step a (T, B, 3, H, W) stream from a fresh state; returns the outputs and the states."""
    state = model.init_state(frames.shape[1])
    outs, states = [], [state]
    for frame in frames:
        out, state = model.step(state, frame, **kwargs)
        outs.append(out)
        states.append(state)
    return outs, states


# ------------------------------------------------------------------- update
def test_update_false_reads_without_changing_the_state(model):
    frames = rand_frames(3)
    _, states = run(model, frames[:2])
    old = states[-1]
    out, new = model.step(old, frames[2], update=False)
    assert torch.isfinite(out.patch_tokens).all() and out.patch_tokens.abs().sum() > 0
    assert_state_equal(new, old)
    assert new.steps.tolist() == [3]
    # control: the same frame with update=True does change it, with identical outputs
    out_u, new_u = model.step(old, frames[2], update=True)
    assert not torch.equal(new_u.state_feat, old.state_feat)
    assert not torch.equal(new_u.mem, old.mem)
    assert torch.equal(out_u.patch_tokens, out.patch_tokens)
    assert torch.equal(out_u.camera_token, out.camera_token)


# -------------------------------------------------------------------- reset
def test_reset_returns_to_the_initial_state_after_the_frames_outputs(model):
    frames = rand_frames(3, seed=1)
    _, states = run(model, frames[:2])
    out_r, after_reset = model.step(states[-1], frames[2], reset=True)
    init = model.init_state(1)
    assert_state_equal(after_reset, init)
    assert after_reset.steps.tolist() == [3]  # the frame counter keeps going
    # the reset frame's own outputs come from the accumulated state, as without reset
    out_n, _ = model.step(states[-1], frames[2])
    assert torch.equal(out_r.patch_tokens, out_n.patch_tokens)
    assert torch.equal(out_r.camera_token, out_n.camera_token)


def test_after_a_reset_the_pose_retriever_is_used_not_the_pose_token(model):
    frames = rand_frames(3, seed=2)
    fresh_out, _ = model.step(model.init_state(1), frames[0])
    assert torch.equal(fresh_out.pose_token_in, model.pose_token)  # a fresh stream starts from it

    state = model.init_state(1)
    _, state = model.step(state, frames[0], reset=True)
    out, _ = model.step(state, frames[1])
    assert not torch.allclose(out.pose_token_in, model.pose_token, atol=1e-3)
    with torch.inference_mode():
        global_feat = out.enc_feat.mean(dim=1, keepdim=True)
        expected = model.pose_retriever.inquire(global_feat, model.init_state(1).mem)
    assert torch.allclose(out.pose_token_in, expected, atol=1e-6)


def test_a_reset_frame_is_equivalent_to_a_read_only_first_frame(model):
    """[A reset, B] and [A update=False, B] leave B with the same (initial) state and memory."""
    frames = rand_frames(2, seed=3)
    s0 = model.init_state(1)
    _, s_reset = model.step(s0, frames[0], reset=True)
    _, s_read = model.step(s0, frames[0], update=False)
    assert_state_equal(s_reset, s_read)
    out_a, _ = model.step(s_reset, frames[1])
    out_b, _ = model.step(s_read, frames[1])
    assert torch.equal(out_a.patch_tokens, out_b.patch_tokens)
    assert torch.equal(out_a.pose_token_in, out_b.pose_token_in)


def test_stream_reset_starts_a_fresh_stream(model):
    stream = Cut3rStream(model)
    frames = rand_frames(3, seed=4, hw=(32, 32))
    first = stream.step(frames[0, 0])
    stream.step(frames[1, 0])
    stream.reset()
    assert stream.frames_seen == 0
    assert_state_equal(stream.state, model.init_state(1))
    again = stream.step(frames[0, 0])
    assert again.index == 0
    assert torch.equal(again.patch_tokens, first.patch_tokens)


# ------------------------------------------------------------------ batching
def test_a_batch_of_streams_equals_each_stream_alone(model):
    frames = rand_frames(3, batch=2, seed=5)
    assert not torch.equal(frames[:, 0], frames[:, 1])
    outs, states = run(model, frames, with_heads=True)
    for b in range(2):
        alone, alone_states = run(model, frames[:, b:b + 1], with_heads=True)
        for t in range(3):
            for name in ('camera_token', 'patch_tokens', 'enc_feat', 'pose_token_in'):
                got, want = getattr(outs[t], name)[b:b + 1], getattr(alone[t], name)
                assert torch.allclose(got, want, atol=1e-5), (b, t, name)
            assert torch.allclose(outs[t].heads.camera_pose[b:b + 1], alone[t].heads.camera_pose, atol=1e-5)
            assert torch.allclose(states[t + 1].state_feat[b:b + 1], alone_states[t + 1].state_feat, atol=1e-5)
            assert torch.allclose(states[t + 1].mem[b:b + 1], alone_states[t + 1].mem, atol=1e-5)
    # the two streams really are different
    assert not torch.allclose(outs[2].patch_tokens[0], outs[2].patch_tokens[1], atol=1e-2)


def test_masks_act_per_stream(model):
    frames = rand_frames(3, batch=2, seed=6)
    _, states = run(model, frames[:2])
    old = states[-1]
    _, new = model.step(old, frames[2], update=[True, False])
    assert not torch.equal(new.state_feat[0], old.state_feat[0])
    assert torch.equal(new.state_feat[1], old.state_feat[1])
    assert torch.equal(new.mem[1], old.mem[1])
    _, both = model.step(old, frames[2])
    assert torch.equal(new.state_feat[0], both.state_feat[0])

    _, new = model.step(old, frames[2], reset=torch.tensor([False, True]))
    init = model.init_state(1)
    assert torch.equal(new.state_feat[1], init.state_feat[0]) and torch.equal(new.mem[1], init.mem[0])
    assert torch.equal(new.state_feat[0], both.state_feat[0])
    assert not torch.equal(new.state_feat[0], init.state_feat[0])


def test_mixed_first_and_later_streams_in_one_batch(model):
    """A stream at frame 0 uses the pose token while its batch neighbour uses the retriever."""
    frames = rand_frames(2, batch=2, seed=7)
    _, later = model.step(model.init_state(2), frames[0])
    fresh = model.init_state(2)
    state = type(later)(state_feat=torch.cat([fresh.state_feat[:1], later.state_feat[1:]]),
                        mem=torch.cat([fresh.mem[:1], later.mem[1:]]),
                        steps=torch.tensor([0, 1]))
    out, _ = model.step(state, frames[1])
    assert torch.equal(out.pose_token_in[0], model.pose_token[0])
    assert not torch.allclose(out.pose_token_in[1], model.pose_token[0], atol=1e-3)


# ------------------------------------------------------------ constant size
def test_state_does_not_grow(model):
    frames = rand_frames(20, hw=(32, 32), seed=8)
    state = model.init_state(1)
    shapes = (state.state_feat.shape, state.mem.shape)
    nbytes = (state.state_feat.untyped_storage().nbytes(), state.mem.untyped_storage().nbytes())
    assert nbytes == (state.state_feat.numel() * 4, state.mem.numel() * 4)
    for frame in frames:
        _, state = model.step(state, frame)
    assert (state.state_feat.shape, state.mem.shape) == shapes
    assert (state.state_feat.untyped_storage().nbytes(), state.mem.untyped_storage().nbytes()) == nbytes
    assert state.steps.tolist() == [20]
    cfg = model.config
    assert shapes == ((1, cfg.state_size, cfg.dec_embed_dim), (1, cfg.local_mem_size, 2 * cfg.dec_embed_dim))


# --------------------------------------------------------------------- history
def test_first_frame_is_history_free_later_frames_are_not(model):
    frames = rand_frames(3, seed=9)
    changed = frames.clone()
    changed[0] = rand_frames(1, seed=99)[0]
    outs_a, _ = run(model, frames)
    outs_b, _ = run(model, changed)
    assert not torch.equal(outs_a[0].patch_tokens, outs_b[0].patch_tokens)
    # frames 1 and 2 are the same images, but their tokens depend on frame 0 through the state
    assert (outs_a[2].patch_tokens - outs_b[2].patch_tokens).abs().max() > 1e-3
    # a frame seen first gives the same tokens whatever any other stream saw before
    first_alone, _ = model.step(model.init_state(1), frames[2])
    first_again, _ = run(model, frames[2:3])
    assert torch.equal(first_alone.patch_tokens, first_again[0].patch_tokens)
    assert not torch.allclose(first_alone.patch_tokens, outs_a[2].patch_tokens, atol=1e-3)


# --------------------------------------------------------------- bad inputs
def _bad_frames():
    good = rand_frames(1)[0]
    nan, inf = good.clone(), good.clone()
    nan[0, 1, 2, 3] = float('nan')
    inf[0, 0, 0, 0] = float('inf')
    return {
        'ndim 3': good[0],
        'ndim 5': good[None],
        '4 channels': torch.cat([good, good[:, :1]], dim=1),
        '1 channel': good[:, :1],
        'uint8': ((good + 1) * 127).to(torch.uint8),
        'int64': good.long(),
        'NaN': nan,
        'inf': inf,
        'H not multiple of 16': good[:, :, :40],
        'W not multiple of 16': good[:, :, :, :56],
        'empty': good[:, :, :0],
        'batch size mismatch': torch.cat([good, good]),
        'not a tensor': good.numpy(),
    }


@pytest.mark.parametrize('case', sorted(_bad_frames()))
def test_bad_frames_raise_input_error_and_change_nothing(model, case):
    state = model.init_state(1)
    before = (state.state_feat.clone(), state.mem.clone())
    with pytest.raises(Cut3rInputError):
        model.step(state, _bad_frames()[case])
    assert torch.equal(state.state_feat, before[0]) and torch.equal(state.mem, before[1])


@pytest.mark.parametrize('mask', [1, 0, 1.0, torch.tensor([1]), torch.tensor([1.0]), [True, False],
                                  torch.tensor([[True]]), np.array([1])],
                         ids=['int 1', 'int 0', 'float', 'int tensor', 'float tensor', 'wrong length',
                              'wrong shape', 'int array'])
@pytest.mark.parametrize('which', ['update', 'reset'])
def test_bad_masks_raise_input_error(model, which, mask):
    with pytest.raises(Cut3rInputError, match=which):
        model.step(model.init_state(1), rand_frames(1)[0], **{which: mask})


@pytest.mark.parametrize('which', ['update', 'reset'])
def test_good_masks_are_accepted(model, which):
    frame = rand_frames(1)[0]
    for mask in (True, False, [True], torch.tensor([False]), np.array([True]), torch.tensor(True)):
        out, _ = model.step(model.init_state(1), frame, **{which: mask})
        assert out.patch_tokens.shape[0] == 1


@pytest.mark.parametrize('mask', ['yes', None, {'a': True}], ids=['string', 'None', 'dict'])
def test_unconvertible_masks_raise_input_error(model, mask):
    with pytest.raises(Cut3rInputError, match='update'):
        model.step(model.init_state(1), rand_frames(1)[0], update=mask)


@pytest.fixture
def warm_stream(model):
    stream = Cut3rStream(model)
    stream.step(rand_frames(1, seed=20)[0, 0])
    stream.step(rand_frames(1, seed=21)[0, 0])
    return stream


def _check_unchanged(stream, state, seen, snapshot):
    assert stream.state is state  # the same object, not a rebuilt one
    assert stream.state.state_feat is state.state_feat and stream.state.mem is state.mem
    assert torch.equal(state.state_feat, snapshot[0]) and torch.equal(state.mem, snapshot[1])
    assert stream.frames_seen == seen


@pytest.mark.parametrize('case', ['NaN', 'inf', '4 channels', 'H not multiple of 16', 'batched 4-D',
                                  'non-bool update'])
def test_failed_stream_step_leaves_the_stream_unchanged(warm_stream, case):
    state, seen = warm_stream.state, warm_stream.frames_seen
    assert seen == 2
    snapshot = (state.state_feat.clone(), state.mem.clone())
    good = rand_frames(1, seed=22)[0, 0]
    image, kwargs = {
        'NaN': (good.masked_fill(good > 0.9, float('nan')), {}),
        'inf': (good.masked_fill(good > 0.9, float('inf')), {}),
        '4 channels': (torch.cat([good, good[:1]]), {}),
        'H not multiple of 16': (good[:, :40], {}),
        'batched 4-D': (good[None], {}),
        'non-bool update': (good, {'update': 1}),
    }[case]
    with pytest.raises(Cut3rInputError):
        warm_stream.step(image, **kwargs)
    _check_unchanged(warm_stream, state, seen, snapshot)
    # and it still works afterwards, continuing where it was
    result = warm_stream.step(good)
    assert result.index == 2 and warm_stream.frames_seen == 3


@pytest.mark.parametrize('case', ['float64 array', 'grayscale (H, W)', 'RGBA (H, W, 4)', 'empty',
                                  'list', 'CHW uint8 tensor'])
def test_bad_raw_images_raise_image_format_error(warm_stream, case):
    state, seen = warm_stream.state, warm_stream.frames_seen
    snapshot = (state.state_feat.clone(), state.mem.clone())
    rng = np.random.default_rng(0)
    image = {
        'float64 array': rng.random((48, 64, 3)),
        'grayscale (H, W)': rng.integers(0, 256, (48, 64), dtype=np.uint8),
        'RGBA (H, W, 4)': rng.integers(0, 256, (48, 64, 4), dtype=np.uint8),
        'empty': np.zeros((0, 0, 3), dtype=np.uint8),
        'list': [[[0, 0, 0]]],
        'CHW uint8 tensor': torch.zeros(3, 48, 64, dtype=torch.uint8),
    }[case]
    with pytest.raises(ImageFormatError):
        warm_stream.step(image)
    _check_unchanged(warm_stream, state, seen, snapshot)


def test_stream_refuses_unknown_preprocessing(model):
    with pytest.raises(ValueError, match='preprocessing'):
        Cut3rStream(model, preprocessing='siglip')


# -------------------------------------------------------------------- dtypes
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['float16', 'bfloat16'])
@pytest.mark.parametrize('how', ['build_cut3r', 'Module.to'])
def test_half_precision_copies_run_on_cpu(model, dtype, how):
    if how == 'build_cut3r':
        half = build_cut3r(model.config, model.state_dict(), dtype=dtype)
    else:
        half = copy.deepcopy(model).to(dtype)
    assert half.dtype == dtype and half.enc_blocks[0].attn.qkv.weight.dtype == dtype
    frames = rand_frames(3, seed=30)
    ref, _ = run(model, frames, with_heads=True)
    got, states = run(half, frames, with_heads=True)
    assert states[-1].state_feat.dtype == dtype and states[-1].mem.dtype == dtype
    for t in range(3):
        for name in ('patch_tokens', 'camera_token'):
            g, r = getattr(got[t], name), getattr(ref[t], name)
            assert g.dtype == dtype and torch.isfinite(g).all(), (t, name)
            scale = float(r.abs().max())
            err = float((g.float() - r).abs().max())
            assert err <= 5e-2 * scale, f'{name} frame {t}: max error {err:.4g} vs scale {scale:.4g}'
        heads = got[t].heads
        for name, value in vars(heads).items():
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), (t, name)
        assert float((heads.camera_pose - ref[t].heads.camera_pose).abs().max()) < 5e-2


def test_build_cut3r_keeps_the_heads_in_float32(model):
    half = build_cut3r(model.config, model.state_dict(), dtype=torch.float16)
    assert {p.dtype for p in half.downstream_head.parameters()} == {torch.float32}
    assert {p.dtype for n, p in half.named_parameters() if not n.startswith('downstream_head.')} == {torch.float16}


# -------------------------------------------------------------------- shapes
@pytest.mark.parametrize('hw', [(432, 432), (384, 512), (512, 384), (224, 224)],
                         ids=['432x432', '512x384 landscape', '384x512 portrait', '224x224'])
def test_token_shapes(model, hw):
    stream = Cut3rStream(model)
    result = stream.step(rand_frames(1, hw=hw, seed=40)[0, 0])
    h, w = hw
    n = (h // 16) * (w // 16)
    d = model.config.dec_embed_dim
    assert result.patch_tokens.shape == (n, d)
    assert result.camera_token.shape == (1, d)
    assert result.grid_hw == (h // 16, w // 16)
    assert result.heads is None
    assert result.index == 0 and stream.frames_seen == 1


@pytest.mark.parametrize('preprocessing, image_hw, grid', [
    ('vlm3r', (480, 640), (27, 27)),
    ('cut3r512', (480, 640), (24, 32)),
    ('cut3r224', (480, 640), (14, 14)),
])
def test_raw_images_are_preprocessed(model, preprocessing, image_hw, grid):
    stream = Cut3rStream(model, preprocessing=preprocessing)
    image = np.random.default_rng(1).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    result = stream.step(image)
    assert result.grid_hw == grid
    assert result.image.shape == (3, grid[0] * 16, grid[1] * 16)
    assert result.patch_tokens.shape == (grid[0] * grid[1], model.config.dec_embed_dim)
    assert torch.isfinite(result.patch_tokens).all()


# --------------------------------------------------------------------- heads
@pytest.mark.parametrize('which', ['model', 'linear_model'])
def test_heads(which, request):
    m = request.getfixturevalue(which)
    h, w = 48, 64
    outs, _ = run(m, rand_frames(3, batch=2, hw=(h, w), seed=50), with_heads=True)
    for out in outs:
        heads = out.heads
        assert heads is not None
        c2w = heads.camera_c2w
        assert c2w.shape == (2, 4, 4)
        rot = c2w[:, :3, :3]
        assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5)
        assert torch.allclose(torch.linalg.det(rot), torch.ones(2), atol=1e-5)
        assert torch.equal(c2w[:, 3], torch.tensor([[0.0, 0, 0, 1]] * 2))
        assert torch.equal(c2w[:, :3, 3], heads.camera_pose[:, :3])
        quat = heads.camera_pose[:, 3:]
        assert torch.allclose(quat.norm(dim=-1), torch.ones(2), atol=1e-5) and (quat[:, 0] >= 0).all()
        assert heads.pts3d_in_self_view.shape == heads.pts3d_in_other_view.shape == (2, h, w, 3)
        assert heads.conf.shape == heads.conf_self.shape == (2, h, w)
        assert (heads.conf >= 1).all() and (heads.conf_self >= 1).all()
        assert heads.rgb.shape == (2, h, w, 3)
        assert (heads.rgb >= -1).all() and (heads.rgb <= 1).all()
        for value in vars(heads).values():
            assert torch.isfinite(value).all()
    # poses differ between frames (not a constant output)
    assert not torch.allclose(outs[0].heads.camera_pose, outs[2].heads.camera_pose, atol=1e-4)


def test_linear_head_self_view_points_have_positive_depth(linear_model):
    """The linear head flips raw rays with z < 0 (official pos_z), so self-view z > 0."""
    outs, _ = run(linear_model, rand_frames(2, hw=(32, 48), seed=51), with_heads=True)
    for out in outs:
        assert (out.heads.pts3d_in_self_view[..., 2] >= 0).all()


def test_with_heads_false_returns_no_heads(model):
    out, _ = model.step(model.init_state(1), rand_frames(1)[0], with_heads=False)
    assert out.heads is None
    out, _ = model.step(model.init_state(1), rand_frames(1)[0])
    assert out.heads is None  # the default
    assert Cut3rStream(model).step(rand_frames(1)[0, 0]).heads is None
    assert Cut3rStream(model).step(rand_frames(1)[0, 0], with_heads=True).heads is not None
