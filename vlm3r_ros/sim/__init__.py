"""Simulation: a camera moving through a room with known objects, rendered by a backend.

core.py holds everything backend-neutral (scene, trajectory, renderer interface, simulation,
ground truth); procedural.py generates rooms from a seed; pybullet_backend.py renders here;
habitat_backend.py renders with habitat-sim for users who have it; factory.py
(``make_simulation``, ``make_renderer``) chooses a backend, so core.py imports none. No ROS imports.
"""
