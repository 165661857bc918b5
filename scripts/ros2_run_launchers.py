#!/usr/bin/env python3
"""Write one `ros2 run` launcher per console script of setup.py (called by CMakeLists.txt).

    ros2_run_launchers.py SETUP_PY OUT_DIR PYTHON

`ros2 run vlm3r_ros NAME` runs lib/vlm3r_ros/NAME, and colcon's ament_cmake build never runs
setup.py, so CMake installs these small launchers there: one per entry of CONSOLE_SCRIPTS
(vlm3r-ask, vlm3r-eval, ...) and one per ROS2_RUN_ALIASES entry (vlm3r_node, vlm3r_sim_bridge:
the names the launch files use). setup.py is read as a syntax tree, never executed, so the
two lists have one home. Each launcher starts with PYTHON, the interpreter the interfaces
were built for. OUT_DIR is emptied first, so a removed entry point leaves no stale launcher.
"""
import ast
import shutil
import sys
from pathlib import Path

TEMPLATE = '''#!{python}
"""`ros2 run vlm3r_ros {name}`: {module}:{function} (written by scripts/ros2_run_launchers.py)."""
import sys

from {module} import {function}

if __name__ == '__main__':
    sys.exit({function}())
'''


def setup_py_dicts(setup_py):
    """The module-level dict literals of setup.py, by variable name."""
    tree = ast.parse(Path(setup_py).read_text(), filename=str(setup_py))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)}


def launchers(setup_py):
    """{executable name: 'module:function'} for every console script and ROS alias."""
    dicts = setup_py_dicts(setup_py)
    scripts = dict(dicts['CONSOLE_SCRIPTS'])
    for alias, script in dicts.get('ROS2_RUN_ALIASES', {}).items():
        if script not in scripts:
            raise SystemExit(f'setup.py: ROS2_RUN_ALIASES[{alias!r}] = {script!r} is not in CONSOLE_SCRIPTS')
        scripts[alias] = scripts[script]
    return scripts


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    setup_py, out_dir, python = argv
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name, target in sorted(launchers(setup_py).items()):
        module, function = target.split(':')
        path = out / name
        path.write_text(TEMPLATE.format(python=python, name=name, module=module, function=function))
        path.chmod(0o755)
    return 0


if __name__ == '__main__':
    sys.exit(main())
