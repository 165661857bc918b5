"""question_type -> generator, with the per-scene cap the official scripts use by default.

Targets are ``"module:function"`` strings resolved on first use, so a broken or missing module
only fails the task types that live in it. To add a task type, add one :class:`GeneratorSpec`
line below (docs/data.md describes the generator contract).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class GeneratorSpec:
    question_type: str
    target: str  # "module:function"
    benchmark: str  # "vsibench" or "vstibench"
    max_per_scene: int | None  # the official num_subsample default; None: keep all

    def load(self) -> Callable:
        module_name, _, func_name = self.target.partition(":")
        module = importlib.import_module(module_name)
        try:
            return getattr(module, func_name)
        except AttributeError as exc:
            raise LookupError(f"generator {self.target!r} for {self.question_type!r} does not exist") from exc


_VSI = "vlm3r_ros.data.qa.vsibench"
_VSTI = "vlm3r_ros.data.qa.vstibench"

SPECS: list[GeneratorSpec] = [
    # VSI-Bench (vsibench.py)
    GeneratorSpec("object_counting", f"{_VSI}:object_counting", "vsibench", 6),
    GeneratorSpec("object_abs_distance", f"{_VSI}:object_abs_distance", "vsibench", 6),
    GeneratorSpec("object_size_estimation", f"{_VSI}:object_size_estimation", "vsibench", 6),
    GeneratorSpec("room_size_estimation", f"{_VSI}:room_size_estimation", "vsibench", 1),
    GeneratorSpec("object_rel_distance", f"{_VSI}:object_rel_distance", "vsibench", 6),
    GeneratorSpec("object_rel_direction_easy", f"{_VSI}:object_rel_direction_easy", "vsibench", 6),
    GeneratorSpec("object_rel_direction_medium", f"{_VSI}:object_rel_direction_medium", "vsibench", 6),
    GeneratorSpec("object_rel_direction_hard", f"{_VSI}:object_rel_direction_hard", "vsibench", 6),
    # needs the free space (SceneGraph.floor, a simulated room): none from the official metadata
    GeneratorSpec("route_planning", "vlm3r_ros.data.qa.route_planning:route_planning", "vsibench", 3),
    GeneratorSpec("obj_appearance_order", f"{_VSI}:obj_appearance_order", "vsibench", 6),
    # VSTI-Bench (vstibench.py); caps are the generators' num_subsample defaults (nf/lr: as ud)
    GeneratorSpec("camera_displacement", f"{_VSTI}:camera_displacement", "vstibench", 6),
    GeneratorSpec("camera_movement_direction", f"{_VSTI}:camera_movement_direction", "vstibench", 15),  # 5 x v1-v3
    GeneratorSpec("camera_obj_abs_dist", f"{_VSTI}:camera_obj_abs_dist", "vstibench", 6),
    GeneratorSpec("camera_obj_rel_dist_v1", f"{_VSTI}:camera_obj_rel_dist_v1", "vstibench", 6),
    GeneratorSpec("camera_obj_rel_dist_v2", f"{_VSTI}:camera_obj_rel_dist_v2", "vstibench", 6),
    GeneratorSpec("camera_obj_rel_dist_v3", f"{_VSTI}:camera_obj_rel_dist_v3", "vstibench", 6),
    GeneratorSpec("obj_obj_relative_pos_nf", f"{_VSTI}:obj_obj_relative_pos_nf", "vstibench", 9),
    GeneratorSpec("obj_obj_relative_pos_lr", f"{_VSTI}:obj_obj_relative_pos_lr", "vstibench", 9),
    GeneratorSpec("obj_obj_relative_pos_ud", f"{_VSTI}:obj_obj_relative_pos_ud", "vstibench", 9),
]

GENERATORS: dict[str, GeneratorSpec] = {spec.question_type: spec for spec in SPECS}


def question_types(benchmark: str | None = None) -> list[str]:
    """All registered question types (of one benchmark when given), in registry order."""
    return [s.question_type for s in SPECS if benchmark is None or s.benchmark == benchmark]


def get_spec(question_type: str) -> GeneratorSpec:
    try:
        return GENERATORS[question_type]
    except KeyError:
        raise KeyError(f"unknown question type {question_type!r}; known: {', '.join(GENERATORS)}") from None


def get_generator(question_type: str) -> Callable:
    return get_spec(question_type).load()
