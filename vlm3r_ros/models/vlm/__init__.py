"""The VLM-3R reasoning model: SigLIP tower, 3-D fusion block, projector, Qwen2 LLM."""
