"""Tiny VLM-3R configurations with seeded random weights, for tests, demos and benchmarks.

Same module structure and key names as the published model. The 27x27 SigLIP grid and the
pooling/newline layout are kept (so token counts are the real ones); only widths, depths
and the vocabulary shrink. ``vocab_size`` covers the real Qwen2 tokenizer (151,646 ids) so
real prompts can be tokenized and fed. Answers are meaningless: nothing was trained.
"""

from __future__ import annotations

import torch

from .config import Qwen2Settings, SiglipSettings, Vlm3rConfig
from .modeling_vlm3r import Vlm3rModel

QWEN2_TOKENIZER_SIZE = 151_646  # 151,643 BPE ranks + <|endoftext|>, <|im_start|>, <|im_end|>

TINY_VLM3R = Vlm3rConfig(
    vision=SiglipSettings(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4),
    # head_dim 32 (2 query heads sharing 1 key/value head, grouped as Qwen2-7B's 28/4): the smallest
    # head size vLLM's CPU attention runs, so a real vLLM server can serve this LLM (llm_backend openai)
    llm=Qwen2Settings(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=QWEN2_TOKENIZER_SIZE, max_position_embeddings=32768),
    spatial_dim=32,  # the tiny CUT3R's decoder width
    fusion_num_heads=4,
)

# A realistic LLM width for benchmarks: Qwen2-0.5B's shape.
QWEN2_0_5B = Qwen2Settings(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                           num_key_value_heads=2, vocab_size=QWEN2_TOKENIZER_SIZE)


@torch.no_grad()
def random_vlm3r(config: Vlm3rConfig = TINY_VLM3R, seed: int = 0, device: str | torch.device = "cpu"):
    """A VLM-3R model with seeded random weights (torch's default init + a random newline), eval mode.

    The weights are drawn on ``device`` (a 7B model initialises in seconds on a GPU)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = Vlm3rModel(config)
    model.image_newline.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)
