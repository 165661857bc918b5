"""Shared set-up of the unit tests: where the CUT3R parity fixtures live.

The fixtures are part of the repository (test/fixtures/reference/, see its README.md), so
a plain clone runs them. They are located relative to this file, never through the working
directory. A missing fixture folder FAILS the tests that need it, with a message saying
where it was looked for: parity must never be skipped silently.
"""
from pathlib import Path

import pytest

CUT3R_REFERENCE_DIR = Path(__file__).resolve().parents[1] / 'fixtures' / 'reference' / 'cut3r'
CUT3R_FIXTURE_GLOB = 'cut3r_*.safetensors'


def cut3r_fixture_files():
    """The parity fixtures found (sorted), or [] when the folder is missing."""
    if not CUT3R_REFERENCE_DIR.is_dir():
        return []
    return sorted(CUT3R_REFERENCE_DIR.glob(CUT3R_FIXTURE_GLOB))


def _require_reference_dir():
    if not CUT3R_REFERENCE_DIR.is_dir():
        pytest.fail(
            f'CUT3R reference fixtures not found: expected the folder {CUT3R_REFERENCE_DIR} '
            f'(test/fixtures/reference/cut3r of the repository; a checkout without it is '
            f'incomplete). These tests must not be skipped.',
            pytrace=False)
    return CUT3R_REFERENCE_DIR


@pytest.fixture(scope='session')
def cut3r_reference_dir():
    """test/fixtures/reference/cut3r; fails the test (never skips) when it is missing."""
    return _require_reference_dir()


@pytest.fixture(scope='session')
def full_size_keys(cut3r_reference_dir):
    """The parsed full_size_keys.json (keys, shapes and counts of the public checkpoints)."""
    import json

    path = cut3r_reference_dir / 'full_size_keys.json'
    if not path.is_file():
        pytest.fail(f'missing fixture file {path}', pytrace=False)
    return json.loads(path.read_text())


@pytest.fixture(scope='module')
def torch_single_thread():
    """One intra-op torch thread for the modules that use it (restored afterwards).

    The CUT3R tests run tiny models, where threads buy nothing; on a busy 2-core machine
    two OpenMP threads per process made those modules over ten times slower (about 16 s
    for all of them with one thread, several minutes with two). Use it with
    ``pytestmark = pytest.mark.usefixtures('torch_single_thread')``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_generate_tests(metafunc):
    """Parametrize ``cut3r_fixture_file`` over every parity fixture found.

    When none is found the test is still generated once (id ``no-fixtures``) so that it
    fails through the ``cut3r_reference_dir`` check instead of vanishing.
    """
    if 'cut3r_fixture_file' in metafunc.fixturenames:
        files = cut3r_fixture_files()
        if files:
            metafunc.parametrize('cut3r_fixture_file', files, ids=[f.stem for f in files])
        else:
            metafunc.parametrize('cut3r_fixture_file', [None], ids=['no-fixtures'])
