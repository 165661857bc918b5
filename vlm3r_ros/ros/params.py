"""Declared ROS parameters as data: one :class:`ParamSpec` per parameter.

Shared by the nodes (``vlm3r-node``, ``vlm3r-sim-bridge``). Importing it costs only the
rcl_interfaces messages, so a node's parameter table can be read (tests, launch checks)
without loading any model.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: its default (which fixes its type), description and limits.

    The default is a bool, int, float, str, or a tuple of floats (a double array)."""

    name: str
    default: bool | int | float | str | tuple[float, ...]
    description: str
    read_only: bool = True  # a change needs a restart (or a cleanup + configure)
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    constraints: str = ""

    def descriptor(self) -> ParameterDescriptor:
        kind = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
                tuple: ParameterType.PARAMETER_DOUBLE_ARRAY}[type(self.default)]
        constraints = self.constraints
        if self.choices:
            constraints = "one of: " + ", ".join(repr(c) for c in self.choices) + (f". {constraints}" if constraints
                                                                                   else "")
        desc = ParameterDescriptor(name=self.name, type=kind, description=self.description,
                                   additional_constraints=constraints, read_only=self.read_only)
        if self.int_range is not None:
            desc.integer_range = [IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=1)]
        if self.float_range is not None:
            desc.floating_point_range = [FloatingPointRange(from_value=self.float_range[0],
                                                            to_value=self.float_range[1], step=0.0)]
        return desc

    @property
    def declared_default(self):
        """The default as rclpy's declare_parameter wants it (a list for an array)."""
        return [float(v) for v in self.default] if isinstance(self.default, tuple) else self.default


def frame_id_problem(value: str) -> str | None:
    """Why tf2 would refuse ``value`` as a frame id, or None. tf2's own rule (geometry2,
    tf2/src/buffer_core.cpp, ``validateFrameId``): not empty and not starting with '/';
    anything else ('-', '.', digits first, ...) is a valid frame id."""
    if not value:
        return "a tf2 frame id cannot be empty"
    if value.startswith("/"):
        return "a tf2 frame id cannot start with '/'"
    return None
