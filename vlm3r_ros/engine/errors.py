"""The engine's one error type (no ROS, no torch): a stable code and a sentence."""

from __future__ import annotations


class EngineError(Exception):
    """A refused request: ``code`` is stable (e.g. NO_FRAMES), ``message`` a sentence."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
