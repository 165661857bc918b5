"""The package's layers (.importlinter) hold, and the checker really catches an upward import.

``lint-imports`` (import-linter, pinned in requirements.txt) reads every import of the package,
including those inside functions, and checks the contracts in .importlinter: models and media
at the bottom, engine without ROS, data / eval (but its live client) / sim without ROS, sim.core
without its backends, and nothing but tools itself importing tools.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / 'lint-imports'
CONTRACTS = ('models (the nn code)', 'geometry (rotations', 'media (frame sources', 'engine imports no ros', 'data, eval',
             'nothing imports tools', 'sim.core imports no backend')


def run_lint(cwd: Path, config: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath is not None else None
    return subprocess.run([str(LINT_IMPORTS), '--config', str(config), '--no-cache'], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layer_contracts():
    assert LINT_IMPORTS.is_file(), f'{LINT_IMPORTS} missing: import-linter is in requirements.txt (make setup)'
    result = run_lint(REPO, REPO / '.importlinter')
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for name in CONTRACTS:
        assert name in out, f'contract {name!r} was not checked:\n{out}'
    declared = (REPO / '.importlinter').read_text().count('[importlinter:contract:')
    assert re.search(rf'Contracts: {declared} kept, 0 broken', out), out


def test_an_upward_import_inside_a_function_is_caught(tmp_path):
    # A package shaped like ours whose lower layer reaches up into a tool inside a function,
    # the way eval/harness.py once imported tools.ask.
    pkg = tmp_path / 'layered'
    (pkg / 'models').mkdir(parents=True)
    (pkg / 'tools').mkdir()
    for init in (pkg, pkg / 'models', pkg / 'tools'):
        (init / '__init__.py').write_text('')
    (pkg / 'tools' / 'ask.py').write_text('def main():\n    return 0\n')
    (pkg / 'models' / 'net.py').write_text('def forward():\n    from layered.tools import ask\n\n    return ask\n')
    config = tmp_path / '.importlinter'
    config.write_text('[importlinter]\nroot_package = layered\n\n[importlinter:contract:up]\nname = no tools\n'
                      'type = forbidden\nsource_modules =\n    layered.models\nforbidden_modules =\n'
                      '    layered.tools\n')
    result = run_lint(tmp_path, config, pythonpath=str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert 'BROKEN' in out and 'layered.models.net -> layered.tools.ask' in out, out
