"""The argument types shared by the command-line tools."""

import argparse

import pytest

from vlm3r_ros.tools.cli import image_size


def test_image_size_reads_width_by_height():
    assert image_size('640x480') == (640, 480)
    assert image_size('160X120') == (160, 120)


@pytest.mark.parametrize('text', ['640', '640x', 'x480', '640x480x3', 'axb', ''])
def test_image_size_refuses_other_text(text):
    with pytest.raises(argparse.ArgumentTypeError, match='WIDTHxHEIGHT'):
        image_size(text)


def test_image_size_minimum():
    assert image_size('8x8', minimum=8) == (8, 8)
    with pytest.raises(argparse.ArgumentTypeError, match='at least 8x8'):
        image_size('7x100', minimum=8)
    with pytest.raises(argparse.ArgumentTypeError, match='at least 1x1'):
        image_size('0x10')
