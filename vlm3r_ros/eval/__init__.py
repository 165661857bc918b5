"""Evaluation on VSI-Bench / VSTI-Bench style benchmarks (no ROS imports except ``live_client``).

* :mod:`vlm3r_ros.eval.metrics`: the official scores (multiple-choice accuracy, mean relative
  accuracy) and the per-type summary.
* :mod:`vlm3r_ros.eval.benchmark`: reading and validating benchmark rows (jsonl, json, parquet).
* :mod:`vlm3r_ros.eval.harness`: running a backend over a benchmark, resumable results, the table.
* :mod:`vlm3r_ros.eval.live_client`: a ``spatial_query`` client of a running ``vlm3r-node`` (rclpy).
"""
