#!/usr/bin/env bash
# Set up vlm3r_ros for development and tests, in .venv/ at the repository root:
#   1. a virtual environment (python3 -m venv) with a pinned pip;
#   2. torch, FIRST, so that no later requirement can pull another torch build;
#   3. requirements.txt (Python libraries and the ROS 2 Kilted wheels from PyPI);
#   4. the ROS interfaces in msg/ and srv/, built with CMake in build/ and
#      installed into .venv (C libraries) and build/interfaces_py (Python modules);
#      before them tf2_msgs/msg/TFMessage, which the wheels lack, into .venv
#      (scripts/build_tf2_msgs.sh, from interfaces/tf2_msgs);
#   5. the package itself, editable: pip install -e .
# Every pip install gets a constraints file that pins the installed torch.
#
# Idempotent: .venv/.setup-stamp holds a hash of every input (requirements,
# constraints, setup.py, package.xml, CMakeLists.txt, msg/, srv/, interfaces/tf2_msgs,
# this script, scripts/build_tf2_msgs.sh, scripts/cmake_install.sh, scripts/ros2_run_launchers.py,
# vlm3r_ros/__init__.py and the settings
# below). When it matches and the installed packages import, the script prints
# "set-up is up to date" and changes nothing.
#
# Settings (environment variables):
#   VLM3R_PYTHON           Python used to create .venv (default: python3).
#   VLM3R_TORCH_SPEC       pip requirement for torch (default: the torch== line of
#                          constraints.txt, a CPU build on this project's machines).
#                          The special value "installed" keeps the torch already
#                          installed in .venv (for a wheel you installed by hand,
#                          e.g. NVIDIA's Jetson wheel) and fails if there is none.
#   VLM3R_TORCH_INDEX_URL  index to take torch from, e.g.
#                          https://download.pytorch.org/whl/cu128 for a CUDA build.
# Whatever torch ends up installed, the constraints given to the later pip
# installs pin exactly that version (written to .venv/.constraints.txt).
# See README.md, "Installing torch for CUDA / Jetson".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.setup-stamp"
EFFECTIVE_CONSTRAINTS="$VENV/.constraints.txt"
BUILD="$ROOT/build"
PKG=vlm3r_ros
PIP_SPEC="pip==26.3"

BASE_PYTHON="${VLM3R_PYTHON:-python3}"
DEFAULT_TORCH_SPEC="$(grep -E '^torch==' constraints.txt | head -n1)"
TORCH_SPEC="${VLM3R_TORCH_SPEC:-$DEFAULT_TORCH_SPEC}"
TORCH_INDEX_URL="${VLM3R_TORCH_INDEX_URL:-}"

# What a working set-up must be able to import, from outside the source tree.
IMPORT_CHECK="
import torch, rclpy
from rclpy.type_support import check_for_type_support
from ${PKG}.msg import SpatialState
from ${PKG}.srv import SpatialQuery
from tf2_msgs.msg import TFMessage
check_for_type_support(SpatialState)
check_for_type_support(SpatialQuery)
check_for_type_support(TFMessage)
"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/cmake_install.sh
source "$ROOT/scripts/cmake_install.sh"  # cmake_install_package

inputs_hash() {
  local f
  {
    for f in requirements.txt constraints.txt setup.py pyproject.toml package.xml \
             CMakeLists.txt scripts/setup.sh msg/*.msg srv/*.srv scripts/ros2_run_launchers.py \
             vlm3r_ros/__init__.py \
             scripts/build_tf2_msgs.sh scripts/cmake_install.sh interfaces/tf2_msgs/CMakeLists.txt \
             interfaces/tf2_msgs/package.xml interfaces/tf2_msgs/msg/*.msg; do
      printf '== %s\n' "$f"
      cat "$f"
    done
    printf '== settings\n%s\n%s\n%s\n' "$BASE_PYTHON" "$TORCH_SPEC" "$TORCH_INDEX_URL"
  } | sha256sum | cut -d' ' -f1
}

imports_work() {
  (cd / && "$PY" -c "$IMPORT_CHECK") >/dev/null 2>&1
}

want_stamp="$(LC_ALL=C inputs_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] && imports_work; then
  log "set-up is up to date ($VENV)"
  exit 0
fi

log "setting up $PKG in $VENV"
rm -f "$STAMP"

# Work as if the venv were activated, and ignore a sourced ROS installation:
# everything must come from .venv.
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
unset PYTHONHOME PYTHONPATH CMAKE_PREFIX_PATH COLCON_PREFIX_PATH AMENT_PREFIX_PATH
export PIP_DISABLE_PIP_VERSION_CHECK=1

pip_install() {
  "$PY" -m pip install --quiet --progress-bar off "$@"
}

# 1. Virtual environment ------------------------------------------------------
if [[ -x "$PY" ]] && "$PY" -c 'import sys' >/dev/null 2>&1; then
  log "1/5 venv exists: $("$PY" --version 2>&1)"
else
  command -v "$BASE_PYTHON" >/dev/null || die "no '$BASE_PYTHON' found; set VLM3R_PYTHON to a Python 3.10-3.12"
  log "1/5 creating venv with $("$BASE_PYTHON" --version 2>&1) ($(command -v "$BASE_PYTHON"))"
  rm -rf "$VENV"
  "$BASE_PYTHON" -m venv "$VENV"
fi
if [[ "$("$PY" -m pip --version | cut -d' ' -f2)" != "${PIP_SPEC#pip==}" ]]; then
  log "    installing $PIP_SPEC"
  pip_install --upgrade "$PIP_SPEC"
fi

# 2. torch, before anything else ---------------------------------------------
torch_version() {
  "$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null
}
torch_satisfies() {  # exit 0 when the installed torch meets the requirement $1 (never for a URL)
  "$PY" -c '
import importlib.metadata as md, sys
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.version import Version
req = Requirement(sys.argv[1])
ok = req.name == "torch" and not req.url and req.specifier.contains(Version(md.version("torch")), prereleases=True)
sys.exit(0 if ok else 1)
' "$1" >/dev/null 2>&1
}

if [[ "$TORCH_SPEC" == "installed" ]]; then
  torch_version >/dev/null || die "VLM3R_TORCH_SPEC=installed, but no torch is installed in $VENV; install it with $PY -m pip install ..."
  log "2/5 keeping the installed torch $(torch_version) (VLM3R_TORCH_SPEC=installed)"
elif torch_satisfies "$TORCH_SPEC"; then
  log "2/5 torch $(torch_version) already installed, meets '$TORCH_SPEC'"
else
  log "2/5 installing '$TORCH_SPEC'${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  if [[ -n "$TORCH_INDEX_URL" ]]; then
    pip_install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
  elif [[ "$TORCH_SPEC" == "$DEFAULT_TORCH_SPEC" ]]; then
    pip_install -c constraints.txt "$TORCH_SPEC"
  else
    pip_install "$TORCH_SPEC"
  fi
fi
TORCH_INSTALLED="$(torch_version)" || die "torch did not install"
# constraints.txt with its torch line replaced by the torch now installed.
{
  printf '# Written by scripts/setup.sh from constraints.txt; do not edit.\n'
  grep -vE '^torch([<>=!~ ]|$)' constraints.txt || true
  printf 'torch==%s\n' "$TORCH_INSTALLED"
} >"$EFFECTIVE_CONSTRAINTS"

# 3. Python and ROS 2 requirements --------------------------------------------
log "3/5 installing requirements.txt (torch pinned to $TORCH_INSTALLED)"
pip_install -c "$EFFECTIVE_CONSTRAINTS" -r requirements.txt
[[ "$(torch_version)" == "$TORCH_INSTALLED" ]] || die "torch changed from $TORCH_INSTALLED to $(torch_version) while installing requirements.txt"

# 4. ROS interfaces -------------------------------------------------------------
# 4a. tf2_msgs/msg/TFMessage (/tf, /tf_static of vlm3r-sim-bridge): the PyPI wheels
# have no tf2_msgs, so generate it into .venv from interfaces/tf2_msgs (the upstream
# field list, same type hash). Its own script so it can run alone; see its header.
log "4/5 building tf2_msgs (not among the wheels) in $BUILD/tf2_msgs"
bash "$ROOT/scripts/build_tf2_msgs.sh" "$VENV" "$BUILD/tf2_msgs"
# 4b. Our msg/ and srv/. The C libraries and share/ go into .venv like a wheel's; the
# generated Python (PYTHON_INSTALL_DIR) into build/python, where pip never sees rosidl's
# egg-info as the same distribution. Only msg/, srv/ (action/) and the typesupport extensions are
# kept, in build/interfaces_py/vlm3r_ros, which site-packages/vlm3r_ros.pkg names for
# vlm3r_ros/__init__.py (pkgutil.extend_path). Nothing is written into the source tree.
log "4/5 building msg/ and srv/ with CMake in $BUILD"
# Set-ups before this one generated into the source package; those copies would shadow.
rm -rf "$ROOT/$PKG/msg" "$ROOT/$PKG/srv"
rm -f "$ROOT/$PKG"/*.so
rm -rf "$BUILD/python"  # a removed .msg must not survive
cmake_install_package "$ROOT" "$BUILD" -DPYTHON_INSTALL_DIR="$BUILD/python"
INTERFACES_PY="$BUILD/interfaces_py/$PKG"
rm -rf "$BUILD/interfaces_py"
mkdir -p "$INTERFACES_PY"
for kind in msg srv action; do  # the interface kinds rosidl generates (action once there is one)
  if [[ -d "$BUILD/python/$PKG/$kind" ]]; then cp -R "$BUILD/python/$PKG/$kind" "$INTERFACES_PY/"; fi
done
cp "$BUILD/python/$PKG"/*.so "$INTERFACES_PY/"
SITE_PACKAGES="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
printf '%s\n' "$INTERFACES_PY" >"$SITE_PACKAGES/$PKG.pkg"

# 5. The package, editable ------------------------------------------------------
# Keep build isolation: the venv's own setuptools is too old for PEP 660.
log "5/5 installing $PKG (pip install -e .)"
pip_install -c "$EFFECTIVE_CONSTRAINTS" -e "$ROOT"
[[ "$(torch_version)" == "$TORCH_INSTALLED" ]] || die "torch changed while installing $PKG"

(cd / && "$PY" -c "$IMPORT_CHECK") || die "set-up finished, but '$PKG.msg' / '$PKG.srv' / torch / rclpy do not import (see above)"
printf '%s\n' "$want_stamp" >"$STAMP"
log "done in ${SECONDS}s: torch $TORCH_INSTALLED, $("$PY" --version 2>&1), venv $VENV"
