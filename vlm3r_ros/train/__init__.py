"""Instruction tuning of VLM-3R (vlm3r-train, vlm3r-cache-features, vlm3r-sim-dataset); no ROS.

See docs/training.md. Modules are imported where used (peft, transformers' Trainer and pybullet
are heavy), so importing this package costs nothing.
"""
