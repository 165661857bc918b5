"""Transformer building blocks of CUT3R: 2-D RoPE, attention, encoder and decoder blocks.

Attribute names follow the official checkpoint keys (``attn.qkv``, ``cross_attn.projq``,
``norm_y``, ``mlp.fc1`` ...), so a state dict loads without renaming.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-6


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LN_EPS)


class Cut3rLinear(nn.Linear):
    """``nn.Linear`` that can run CPU float32 inference on oneDNN's GEMM instead of MKL's.

    On this project's AVX-512 CPU (AMD) oneDNN's float32 GEMM is faster than MKL's, with the
    same float32 arithmetic in another summation order (relative differences ~1e-6; the
    parity fixtures' rule holds: docs/cut3r.md). Off unless ``onednn`` is set (the model's
    :meth:`Cut3rModel.set_linear_kernel`); never used for other devices or dtypes, nor when
    autograd records (the oneDNN op has no backward).
    """

    onednn = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.onednn and x.device.type == "cpu" and x.dtype == torch.float32 == self.weight.dtype
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class Cut3rTensorCache:
    """A small first-in-first-out cache of tensors built from a hashable key.

    Plain dict operations only (atomic under the GIL), so the model stays deep-copyable and
    a second thread at worst rebuilds an entry. Cached tensors are shared: never change one
    in place.
    """

    def __init__(self, size: int = 32):
        self.size = size
        self._store: dict = {}

    def get(self, key, make):
        value = self._store.get(key)
        if value is None:
            value = make()
            if len(self._store) >= self.size:
                self._store.pop(next(iter(self._store), None), None)
            self._store[key] = value
        return value

    def clear(self) -> None:
        self._store.clear()


class Cut3rRoPE2D(nn.Module):
    """2-D rotary position embedding with the arithmetic of the official cuRoPE2D kernel.

    For a head of width D there are Q = D/4 frequencies ``inv_freq_j = 1 / base^(j/Q)``.
    Channels ``[0, D/2)`` rotate with the token's row, ``[D/2, D)`` with its column; within
    each half channel j pairs with channel j+Q (rotate-half). The maths is float32 and the
    result is rounded once to the input dtype.

    The cos/sin tables depend only on the positions, Q and the device; they are computed
    once per positions tensor and kept (float32, whatever the token dtype, so the result is
    bit-identical to computing them on every call). The key is the positions tensor itself
    (its storage, shape and strides; the entry holds a reference, so no other tensor can
    take that storage while it is cached): positions must not be changed in place after
    use. The model's own positions are cached tensors that never are.
    """

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = float(base)
        self.tables = Cut3rTensorCache()

    def cos_sin(self, positions: torch.Tensor, q: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 2) integer positions -> cos and sin, each (B, 1, N, 2, Q) float32."""
        inference = torch.is_inference_mode_enabled()  # inference tensors must not leak into autograd
        version = 0 if positions.is_inference() else positions._version
        key = (positions.data_ptr(), tuple(positions.shape), positions.stride(), version, positions.device,
               q, device, inference)

        def make():
            exponent = torch.arange(q, dtype=torch.float32, device=device) / q
            inv_freq = 1.0 / torch.pow(torch.tensor(self.base, dtype=torch.float32, device=device), exponent)
            angles = positions.to(device=device, dtype=torch.float32)[:, None, :, :, None] * inv_freq
            return positions, angles.cos(), angles.sin()  # (B, 1, N, 2, Q); positions pinned while cached

        _, cos, sin = self.tables.get(key, make)
        return cos, sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # tokens: (B, heads, N, D); positions: (B, N, 2) integer (row, col)
        q = tokens.shape[-1] // 4
        cos, sin = self.cos_sin(positions, q, tokens.device)
        x = tokens.float().unflatten(-1, (2, 2, q))  # (B, heads, N, row|col, u|v, Q)
        u, v = x[..., 0, :], x[..., 1, :]
        rotated = torch.stack((u * cos - v * sin, v * cos + u * sin), dim=-2)
        return rotated.flatten(-3).to(tokens.dtype)


class Cut3rMlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = Cut3rLinear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = Cut3rLinear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _rotate(rope: Cut3rRoPE2D | None, t: torch.Tensor, pos: torch.Tensor | None,
            round_fp16: bool) -> torch.Tensor:
    if rope is None or pos is None:
        return t
    if round_fp16:
        # CroCo's image encoder rounds q/k to fp16 around RoPE; parity depends on it.
        return rope(t.to(torch.float16), pos).to(t.dtype)
    return rope(t, pos)


class Cut3rAttention(nn.Module):
    """Multi-head self-attention with optional RoPE.

    ``round_qk_fp16`` reproduces the CroCo image encoder, which rounds q and k to
    float16 before and after RoPE; every other CUT3R attention keeps its dtype.
    """

    def __init__(self, dim: int, num_heads: int, rope: Cut3rRoPE2D | None = None,
                 round_qk_fp16: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = Cut3rLinear(dim, dim * 3, bias=True)
        self.proj = Cut3rLinear(dim, dim)
        self.rope = rope
        self.round_qk_fp16 = round_qk_fp16

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, hd)
        q = _rotate(self.rope, q, pos, self.round_qk_fp16)
        k = _rotate(self.rope, k, pos, self.round_qk_fp16)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Cut3rCrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope: Cut3rRoPE2D | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.projq = Cut3rLinear(dim, dim, bias=True)
        self.projk = Cut3rLinear(dim, dim, bias=True)
        self.projv = Cut3rLinear(dim, dim, bias=True)
        self.proj = Cut3rLinear(dim, dim)
        self.rope = rope

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # (B, heads, N, hd)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor,
                qpos: torch.Tensor | None, kpos: torch.Tensor | None) -> torch.Tensor:
        b, nq, c = query.shape
        q = _rotate(self.rope, self._heads(self.projq(query)), qpos, False)
        k = _rotate(self.rope, self._heads(self.projk(key_value)), kpos, False)
        v = self._heads(self.projv(key_value))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class Cut3rEncoderBlock(nn.Module):
    """Pre-norm ViT block: x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: Cut3rRoPE2D | None,
                 round_qk_fp16: bool = False):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Cut3rAttention(dim, num_heads, rope, round_qk_fp16)
        self.norm2 = layer_norm(dim)
        self.mlp = Cut3rMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class Cut3rDecoderBlock(nn.Module):
    """Self-attention on x, then cross-attention from x to the (normalised) other stream y."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: Cut3rRoPE2D | None):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Cut3rAttention(dim, num_heads, rope)
        self.cross_attn = Cut3rCrossAttention(dim, num_heads, rope)
        self.norm2 = layer_norm(dim)
        self.norm3 = layer_norm(dim)
        self.mlp = Cut3rMlp(dim, int(dim * mlp_ratio))
        self.norm_y = layer_norm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor,
                xpos: torch.Tensor | None, ypos: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), xpos)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, xpos, ypos)
        return x + self.mlp(self.norm3(x))


class Cut3rModLN(nn.Module):
    """adaLN: LN(x) * (1 + scale) + shift, with [shift, scale] = Linear(SiLU(cond))."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = layer_norm(dim)
        self.mlp = nn.Sequential(nn.SiLU(), Cut3rLinear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(cond).chunk(2, dim=-1)  # (B, D) each
        return self.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Cut3rConditionModulationBlock(nn.Module):
    """Transformer block whose norms are modulated by the camera token (head 'final_transform')."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: Cut3rRoPE2D | None):
        super().__init__()
        self.norm1 = Cut3rModLN(dim, dim)
        self.attn = Cut3rAttention(dim, num_heads, rope)
        self.norm2 = Cut3rModLN(dim, dim)
        self.mlp = Cut3rMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, cond), pos)
        return x + self.mlp(self.norm2(x, cond))
