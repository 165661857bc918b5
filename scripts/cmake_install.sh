# Sourced by scripts/setup.sh and scripts/build_tf2_msgs.sh (not run on its own).
# cmake_install_package SRC BUILD [CMAKE-ARGS...]: configure, build and install the ament_cmake
# interface package in SRC into the venv prefix VENV with the rosidl generators
# of the PyPI wheels (../shared/ros2-on-pypi.md). The caller sets VENV and PY and
# defines log and die. CMake rebuilds only what changed; a build tree configured
# for another source or prefix (the repository or venv moved) is started afresh.
cmake_install_package() {
  local src="$1" build="$2"
  shift 2
  export AMENT_PREFIX_PATH="$VENV"   # else "No 'rosidl_typesupport_c' found"
  if [[ -f "$build/CMakeCache.txt" ]] && ! { grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$src" "$build/CMakeCache.txt" \
        && grep -qxF "CMAKE_INSTALL_PREFIX:PATH=$VENV" "$build/CMakeCache.txt"; }; then
    log "    removing $build: it was configured for another source directory or prefix"
    rm -rf "$build"
  fi
  mkdir -p "$build"
  local cmake_log="$build/setup-cmake.log"
  _cmake_step() {  # WHAT CMAKE-ARGS...: run, appending to the log; on failure show its end and stop
    local what="$1"; shift
    cmake "$@" >>"$cmake_log" 2>&1 \
      || { tail -n 40 "$cmake_log" >&2; die "cmake $what of $src failed (full log: $cmake_log)"; }
  }
  : >"$cmake_log"
  _cmake_step configure -S "$src" -B "$build" \
    -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DCMAKE_PREFIX_PATH="$VENV" \
    -DPython3_EXECUTABLE="$PY" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_TESTING=OFF \
    "$@"
  _cmake_step build --build "$build" -j "$(nproc)"
  _cmake_step install --install "$build"
}
