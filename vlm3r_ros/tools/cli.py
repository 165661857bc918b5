"""Small argument types shared by the command-line tools."""

from __future__ import annotations

import argparse


def image_size(text: str, minimum: int = 1) -> tuple[int, int]:
    """argparse type for ``WIDTHxHEIGHT`` (e.g. ``640x480``): (width, height) in pixels."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}") from None
    if width < minimum or height < minimum:
        raise argparse.ArgumentTypeError(f"the image must be at least {minimum}x{minimum} pixels, got {text!r}")
    return width, height
