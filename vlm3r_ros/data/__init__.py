"""Spatial QA data: the scene graph, metadata files, and the QA generators (no ROS imports)."""
