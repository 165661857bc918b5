"""Tiny CUT3R configurations and seeded random weights, for tests, demos and benchmarks.

Same architecture and key names as the released models, a thousand times smaller. The
random initialisation follows the parity fixtures' recipe (weights N(0, 1/fan_in), small
biases, LayerNorm weights near 1, head output layers scaled down) so that the exp-mapped
outputs stay finite and moderate. Outputs are meaningless: no training happened.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import Cut3rConfig
from .modeling_cut3r import Cut3rModel

TINY_CONFIGS = {
    "tiny_dpt": Cut3rConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=32, dec_depth=4,
                            dec_num_heads=4, state_dec_num_heads=2, state_size=25, local_mem_size=8,
                            head_type="dpt", dpt_feature_dim=16, dpt_last_dim=8, dpt_layer_dims=(8, 16, 32, 64)),
    "tiny_linear": Cut3rConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=32, dec_depth=4,
                               dec_num_heads=4, state_dec_num_heads=4, state_size=16, local_mem_size=8,
                               head_type="linear", img_size=(224, 224)),
}

_HEAD_OUTPUT_LAYERS = ("proj.fc2", "rgb_proj.fc2", "cross_proj.fc2", "pose_head.mlp.fc2", ".head.4")


@torch.no_grad()
def init_random_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every parameter of a CUT3R model from a seeded, well-scaled distribution."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen) * std + mean

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            fan_in = module.weight[0].numel() if not isinstance(module, nn.ConvTranspose2d) \
                else module.weight.shape[0] * module.weight[0, 0].numel()
            scale = 0.4 if name.endswith(_HEAD_OUTPUT_LAYERS) else 1.0
            module.weight.copy_(normal(module.weight.shape, scale * fan_in ** -0.5))
            if module.bias is not None:
                module.bias.copy_(normal(module.bias.shape, 0.05))
        elif isinstance(module, nn.LayerNorm):
            module.weight.copy_(normal(module.weight.shape, 0.1, 1.0))
            module.bias.copy_(normal(module.bias.shape, 0.05))
        elif isinstance(module, nn.Embedding):
            module.weight.copy_(normal(module.weight.shape, 1.0))
    for name in ("pose_token", "masked_img_token", "masked_ray_map_token",
                 "pose_retriever.mem", "pose_retriever.masked_token"):
        param = model.get_parameter(name)
        param.copy_(normal(param.shape, 0.2))
    return model


def random_cut3r(name_or_config: str | Cut3rConfig = "tiny_dpt", seed: int = 0):
    """A tiny (or any) CUT3R with seeded random weights, in eval mode."""
    config = TINY_CONFIGS[name_or_config] if isinstance(name_or_config, str) else name_or_config
    return init_random_(Cut3rModel(config), seed).eval().requires_grad_(False)
