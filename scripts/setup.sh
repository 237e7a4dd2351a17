#!/usr/bin/env bash
# Set up a fresh machine: a .venv in the repo with PyTorch, LLaMA-Factory and spr-plugin (+ test tools).
#
# torch is installed here, not by pyproject.toml, so `pip install spr-plugin` never re-pins the torch of
# an existing LLaMA-Factory environment. Override the pair with TORCH_PACKAGES (e.g. a CUDA build);
# avoid torch 2.9.x: LLaMA-Factory 0.9.5 refuses Qwen2-VL on it (Conv3d regression).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_PACKAGES=${TORCH_PACKAGES:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_PACKAGES"
  # shellcheck disable=SC2086
  .venv/bin/pip install --progress-bar off $TORCH_PACKAGES
fi
# tests/test_webui.py drives LlamaBoard in a headless Chromium (Debian packages), installed as root or
# with password-less sudo (CI). In CI (or as root) that test fails, never skips, when the browser is missing.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "[setup] installing chromium + chromium-driver for the LlamaBoard browser test"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "[setup] chromium/chromedriver missing and not root: tests/test_webui.py browser test will be skipped" \
      "(run: sudo apt-get install chromium chromium-driver)"
  fi
fi
echo "[setup] installing spr-plugin with LLaMA-Factory and test tools"
.venv/bin/pip install --progress-bar off -e ".[test]"
.venv/bin/python -c "import llamafactory, spr_plugin; print('[setup] llamafactory', llamafactory.__version__, '- spr-plugin ready')"
