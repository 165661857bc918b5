#!/usr/bin/env bash
# Generate tf2_msgs/msg/TFMessage (the type of /tf and /tf_static) into a venv that
# holds the ROS 2 Kilted PyPI wheels. The wheels ship no tf2_msgs; a ROS 2
# installation does, and never runs this. Called by scripts/setup.sh (step 4);
# runs on its own too:
#   bash scripts/build_tf2_msgs.sh [VENV [BUILD_DIR]]     (defaults: .venv, build/tf2_msgs)
#
# interfaces/tf2_msgs/ is a one-message ament_cmake package with the upstream field
# list (ros2/geometry2, tf2_msgs/msg/TFMessage.msg), so type name and type hash match
# a real ROS 2 system's. It is built with the rosidl generators the way our own
# msg/ and srv/ are (../shared/ros2-on-pypi.md) and installed into VENV like a wheel's
# message package: Python in site-packages, C libraries in VENV/lib, VENV/share.
#
# Idempotent: CMake rebuilds only what changed. When VENV already has tf2_msgs from
# a distribution (a ros-tf2-msgs wheel, should one appear), nothing is built.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$(realpath -m "${1:-$ROOT/.venv}")"
BUILD="$(realpath -m "${2:-$ROOT/build/tf2_msgs}")"
PY="$VENV/bin/python"
SRC="$ROOT/interfaces/tf2_msgs"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/cmake_install.sh
source "$ROOT/scripts/cmake_install.sh"  # cmake_install_package

[[ -x "$PY" ]] || die "no Python at $PY: create the venv first (scripts/setup.sh)"
if "$PY" -c 'import importlib.metadata as m; m.distribution("ros-tf2-msgs")' >/dev/null 2>&1; then
  log "    tf2_msgs: installed from a ros-tf2-msgs wheel, nothing to build"
  exit 0
fi

log "    tf2_msgs: generating tf2_msgs/msg/TFMessage from $SRC into $VENV (log: $BUILD/setup-cmake.log)"
cmake_install_package "$SRC" "$BUILD"

(cd / && "$PY" -c '
from rclpy.type_support import check_for_type_support
from tf2_msgs.msg import TFMessage
check_for_type_support(TFMessage)
') || die "tf2_msgs was built but does not import from $PY (see above)"
