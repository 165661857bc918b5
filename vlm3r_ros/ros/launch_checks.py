"""Checks the launch files run before starting a node (launch/*.launch.py).

launch_ros only warns about a parameter file that does not exist ("Parameter file path is
not a file") and starts the node without it, on its defaults: a typo in
``params_file:=...`` would silently run the wrong model. The launch files call
:func:`require_existing_files` through ``OpaqueFunction`` first, so such a launch stops
with the reason. Nothing here imports launch, so the check is testable without it.
"""
import os


def require_existing_files(context, *argument_names):
    """``OpaqueFunction`` body: every named launch argument must name an existing file.

    ``context.launch_configurations`` holds each declared argument's value (given or
    default) as a string. Raises RuntimeError, which ends the launch with its message;
    returns no actions.
    """
    for name in argument_names:
        path = context.launch_configurations.get(name, '')
        if not os.path.isfile(path):
            raise RuntimeError(
                f"launch argument {name}:={path!r}: no such file. Expected a parameter YAML, e.g. "
                f"{name}:=/path/to/my_vlm3r.yaml or one of the package's share/vlm3r_ros/config/*.yaml")
    return []
