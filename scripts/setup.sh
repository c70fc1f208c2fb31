#!/usr/bin/env bash
# One-command set-up: venv, pinned dependencies, the ROS 2 wheels' cmake fix, colcon build.
# Idempotent: each step is skipped when the stamp of its inputs has not changed,
# so a second run finishes in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
STAMPS=.venv/.timebill-stamps

hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# uv installs the same pinned set as pip in seconds instead of minutes (make demo from a
# fresh clone is mostly this step). It does not read pip's configuration, so the local
# wheel folders pip is told about (find-links: the CPU torch on this machine) are passed on.
UV_VERSION=0.9.5
install_with_uv() {
  pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" || return 1
  local links=() dir
  for dir in $(pip config get global.find-links 2>/dev/null) ${PIP_FIND_LINKS:-}; do
    [ -d "$dir" ] && links+=(--find-links "$dir")
  done
  uv pip install --quiet --python .venv/bin/python "${links[@]}" -r requirements.txt -c constraints.txt \
    && uv pip install --quiet --python .venv/bin/python "${links[@]}" --no-deps -r requirements-nodeps.txt \
    || { echo "[setup] uv failed; installing with pip instead"; return 1; }
}
install_with_pip() {
  pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
  pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

deps=$(hash_of requirements.txt constraints.txt requirements-nodeps.txt)
if ! stamp_ok deps "$deps"; then
  echo "[setup] installing pinned dependencies (first run: under a minute with uv, a few with pip)"
  install_with_uv || install_with_pip
  stamp_set deps "$deps"
  rm -f "$STAMPS/cmakefix" "$STAMPS/build"
fi

if ! stamp_ok cmakefix "$deps"; then
  # The ROS wheels hard-code the wheel builder's Python/numpy include dirs in
  # their rosidl python export files; point them at this venv's.
  echo "[setup] fixing include paths in the ROS 2 wheels' cmake exports"
  python scripts/fix_rosidl_cmake.py .venv
  stamp_set cmakefix "$deps"
fi

src=$(find package.xml setup.py setup.cfg resource src/timebill_msgs -type f | sort | xargs cat | sha256sum | cut -c1-16)
if ! stamp_ok build "$src" || [ ! -f install/setup.bash ] || [ ! -x .venv/bin/timebill ]; then
  echo "[setup] colcon build (timebill_msgs, timebill_ros)"
  export AMENT_PREFIX_PATH=$VIRTUAL_ENV CMAKE_PREFIX_PATH=$VIRTUAL_ENV
  mkdir -p log
  colcon --log-base log build --base-paths . src/timebill_msgs --symlink-install \
    --event-handlers console_cohesion- status- --cmake-args -DBUILD_TESTING=OFF >log/colcon-build.txt 2>&1 \
    || { mkdir -p log; cat log/colcon-build.txt; echo "[setup] colcon build failed" >&2; exit 1; }
  # The `timebill` and `timebill_node` commands on the venv's PATH, same sources.
  pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  [ -x .venv/bin/timebill ] || { echo "[setup] pip install -e . left no .venv/bin/timebill" >&2; exit 1; }
  stamp_set build "$src"
fi
echo "[setup] ready: . scripts/env.sh"
