"""Media for every entry point, with no ROS and no model code.

frames.py: frame sources (a video file, an image folder, one image), image reading and the
official uniform sampling (with the "video shorter than its count" rule); feed.py: a
re-iterable frame feed that also renders generated frames; sample_scene.py: the synthetic
room rendered in memory; writers.py: the TUM trajectory and PLY point-cloud writers and the
bounded point sampler.
"""
