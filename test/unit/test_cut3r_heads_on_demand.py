"""CUT3R computes only the head outputs a caller asks for, bit-identical to the all-heads step,
and its RoPE tables are cached without changing a bit of the result."""
import pytest
import torch

from vlm3r_ros.engine.cut3r_stream import Cut3rStream
from vlm3r_ros.models.cut3r import HEAD_OUTPUTS, Cut3rInputError
from vlm3r_ros.models.cut3r.layers import Cut3rRoPE2D
from vlm3r_ros.models.cut3r.tiny import random_cut3r

pytestmark = pytest.mark.usefixtures('torch_single_thread')

FIELDS = {  # head output -> the Cut3rHeadOutput fields it fills
    'pose': ('camera_pose', 'camera_c2w'),
    'world_points': ('pts3d_in_other_view', 'conf'),
    'self_points': ('pts3d_in_self_view', 'conf_self'),
    'rgb': ('rgb',),
}
HEAD_MODULES = {'self_points': 'dpt_self', 'rgb': 'dpt_rgb', 'world_points': 'dpt_cross', 'pose': 'pose_head'}


@pytest.fixture(scope='module')
def model():
    return random_cut3r('tiny_dpt', seed=21)


@pytest.fixture(scope='module')
def linear_model():
    return random_cut3r('tiny_linear', seed=22)


def frames(n, hw=(48, 64), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 3, *hw, generator=gen) * 2 - 1


def stream_outputs(model, xs, **kwargs):
    state, outs = model.init_state(1), []
    for x in xs:
        out, state = model.step(state, x, **kwargs)
        outs.append((out, state))
    return outs


class CallCounter:
    """Counts forward calls of named submodules with real forward hooks."""

    def __init__(self, head, names):
        self.calls = dict.fromkeys(names, 0)
        self.handles = [getattr(head, n).register_forward_hook(self._hook(n)) for n in names if hasattr(head, n)]

    def _hook(self, name):
        def hook(*_):
            self.calls[name] += 1
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize('which', ['model', 'linear_model'])
@pytest.mark.parametrize('wanted', [('pose',), ('world_points',), ('pose', 'world_points'), ('self_points', 'rgb'),
                                    ()], ids=lambda w: '+'.join(w) or 'tokens')
def test_a_subset_equals_the_all_heads_step_bit_for_bit(which, wanted, request):
    m = request.getfixturevalue(which)
    xs = frames(3, seed=1)
    full = stream_outputs(m, xs, with_heads=True)
    part = stream_outputs(m, xs, heads=wanted)
    for (f, fs), (p, ps) in zip(full, part):
        assert torch.equal(p.patch_tokens, f.patch_tokens) and torch.equal(p.camera_token, f.camera_token)
        assert torch.equal(ps.state_feat, fs.state_feat) and torch.equal(ps.mem, fs.mem)
        if not wanted:
            assert p.heads is None
            continue
        for head, names in FIELDS.items():
            for name in names:
                got = getattr(p.heads, name)
                if head in wanted:
                    assert got is not None and torch.equal(got, getattr(f.heads, name)), name
                else:
                    assert got is None, f'{name} computed although only {wanted} was asked for'


@pytest.mark.parametrize('wanted, runs', [
    (('pose',), {'pose_head'}),
    (('pose', 'world_points'), {'pose_head', 'dpt_cross'}),
    ((), set()),
])
def test_heads_nobody_asked_for_never_run(model, wanted, runs):
    names = ('dpt_self', 'dpt_rgb', 'dpt_cross', 'pose_head')
    counter = CallCounter(model.downstream_head, names)
    modulation = [0]
    handles = [blk.register_forward_hook(lambda *_: modulation.__setitem__(0, modulation[0] + 1))
               for blk in model.downstream_head.final_transform]
    try:
        stream_outputs(model, frames(2, seed=2), heads=wanted)
    finally:
        counter.remove()
        for h in handles:
            h.remove()
    assert {n for n, c in counter.calls.items() if c} == runs
    assert all(counter.calls[n] == 2 for n in runs)
    # the camera-modulated blocks feed only the world points
    assert modulation[0] == (2 * len(model.downstream_head.final_transform) if 'world_points' in wanted else 0)


def test_with_heads_means_every_head_of_the_checkpoint(model, linear_model):
    assert model.head_outputs(with_heads=True) == frozenset(HEAD_OUTPUTS)
    no_rgb = random_cut3r(linear_model.config.__class__(**{**vars(linear_model.config), 'rgb_head': False}))
    assert no_rgb.head_outputs(with_heads=True) == frozenset(HEAD_OUTPUTS) - {'rgb'}
    out, _ = no_rgb.step(no_rgb.init_state(1), frames(1, hw=(32, 48))[0], with_heads=True)
    assert out.heads.rgb is None and out.heads.pts3d_in_self_view is not None
    with pytest.raises(Cut3rInputError, match=r"unknown head output\(s\) \['rgb'\]"):
        no_rgb.step(no_rgb.init_state(1), frames(1, hw=(32, 48))[0], heads=('rgb',))


@pytest.mark.parametrize('kwargs, message', [
    ({'heads': ('pose', 'depth')}, r"unknown head output\(s\) \['depth'\]; this checkpoint has"),
    ({'heads': ('pose',), 'with_heads': True}, 'not both'),
])
def test_bad_head_requests_are_refused_before_the_state_changes(model, kwargs, message):
    stream = Cut3rStream(model)
    stream.step(frames(1)[0, 0])
    before = stream.state
    with pytest.raises(Cut3rInputError, match=message):
        stream.step(frames(1, seed=3)[0, 0], **kwargs)
    assert stream.state is before and stream.frames_seen == 1


def test_a_single_name_is_one_head_not_its_letters(model):
    out, _ = model.step(model.init_state(1), frames(1)[0], heads='pose')
    assert out.heads.camera_pose is not None and out.heads.pts3d_in_other_view is None


# ---------------------------------------------------------------------- RoPE tables
def rope_uncached(base, tokens, positions):
    """The rotation with the tables computed on the spot (the formula before caching)."""
    q = tokens.shape[-1] // 4
    inv_freq = 1.0 / torch.pow(torch.tensor(base), torch.arange(q, dtype=torch.float32) / q)
    angles = positions.float()[:, None, :, :, None] * inv_freq
    cos, sin = angles.cos(), angles.sin()
    x = tokens.float().unflatten(-1, (2, 2, q))
    u, v = x[..., 0, :], x[..., 1, :]
    return torch.stack((u * cos - v * sin, v * cos + u * sin), dim=-2).flatten(-3).to(tokens.dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_cached_rope_tables_give_bit_identical_rotations(dtype):
    rope = Cut3rRoPE2D(100.0)
    gen = torch.Generator().manual_seed(4)
    positions = torch.randint(-1, 30, (2, 50, 2), generator=gen)
    for step in range(3):  # the first call fills the cache, the others read it
        tokens = torch.randn(2, 4, 50, 32, generator=gen).to(dtype)
        assert torch.equal(rope(tokens, positions), rope_uncached(100.0, tokens, positions)), step
    assert len(rope.tables._store) == 1
    cos1, _ = rope.cos_sin(positions, 8, positions.device)
    cos2, _ = rope.cos_sin(positions, 8, positions.device)
    assert cos1 is cos2  # one table per (positions, Q, device)
    other = positions.clone()
    other[0, 0, 0] += 1
    tokens = torch.randn(2, 4, 50, 32, generator=gen)
    assert torch.equal(rope(tokens, other), rope_uncached(100.0, tokens, other))  # another tensor: its own table
    assert len(rope.tables._store) == 2


def test_the_rope_cache_is_bounded():
    rope = Cut3rRoPE2D(100.0)
    for n in range(rope.tables.size + 5):
        rope(torch.randn(1, 1, 3, 16), torch.randint(0, 9, (1, 3, 2)))
    assert len(rope.tables._store) == rope.tables.size


def test_the_model_reuses_its_positions_so_the_tables_are_reused(model):
    stream = Cut3rStream(model)
    stream.step(frames(1)[0, 0], heads=('pose', 'world_points'))
    entries = len(model.enc_blocks[0].attn.rope.tables._store)
    assert entries > 0
    for seed in range(3):
        stream.step(frames(1, seed=seed)[0, 0], heads=('pose', 'world_points'))
    assert len(model.enc_blocks[0].attn.rope.tables._store) == entries  # no new table after the first frame
    assert model.patch_embed.grid_positions(1, 3, 4, model.device) is model.patch_embed.grid_positions(
        1, 3, 4, model.device)


# ------------------------------------------------------------------- linear kernel
def test_the_linear_kernel_switch(model):
    """oneDNN (the default) and torch's GEMM agree to float32 rounding; 'default' is nn.Linear exactly."""
    import torch.nn.functional as F

    from vlm3r_ros.models.cut3r.layers import Cut3rLinear, onednn_linear_available

    xs = frames(2, seed=5)
    assert model.linear_kernel == ('onednn' if onednn_linear_available() else 'default')
    onednn = stream_outputs(model, xs, heads=('pose', 'world_points'))
    assert model.set_linear_kernel('default') == 'default'
    try:
        default = stream_outputs(model, xs, heads=('pose', 'world_points'))
    finally:
        model.set_linear_kernel('onednn')
    for (a, _), (b, _) in zip(onednn, default):
        for x, y in ((a.patch_tokens, b.patch_tokens), (a.heads.pts3d_in_other_view, b.heads.pts3d_in_other_view)):
            assert float(((x - y).abs() / (1e-2 + 1e-2 * y.abs())).max()) < 1e-2  # far inside the robust rule
    layer = Cut3rLinear(8, 4)
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))  # off unless switched on
    layer.onednn = True
    assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-6)
    x.requires_grad_(True)
    layer(x).sum().backward()  # under autograd it falls back to torch's op, which has a backward
    assert x.grad is not None and x.grad.shape == x.shape
    with pytest.raises(ValueError, match="'default' or 'onednn'"):
        model.set_linear_kernel('mkl')
