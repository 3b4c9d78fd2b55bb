#!/usr/bin/env bash
# Create .venv and install everything mmens needs. Idempotent: a second run only checks.
# mmcv 2.1.0 is compiled once from the PyPI sdist (about 14 minutes on 2 cores) and the wheel
# is cached in $MMENS_CACHE (default ~/.cache/mmens) so later set-ups take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=$(realpath -m "${VENV:-.venv}")
CACHE=${MMENS_CACHE:-$HOME/.cache/mmens}
MMCV_VERSION=2.1.0
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

$PIP install -q -r requirements/torch.txt
$PIP install -q wheel ninja

if ! "$VPY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  mkdir -p "$CACHE/wheels"
  TORCH_TAG=$("$VPY" -c "import torch; print(torch.__version__.split('+')[0])")
  WHEEL_DIR="$CACHE/wheels/torch-$TORCH_TAG"
  mkdir -p "$WHEEL_DIR"
  wheel=$(ls "$WHEEL_DIR"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "[setup] building mmcv $MMCV_VERSION with ops from the PyPI sdist (about 15 minutes on 2 cores, once)"
    build=$(mktemp -d)
    # mmcv's setup.py imports pkg_resources: setuptools<70 (torch itself asks for a newer one,
    # which pip restores below once mmcv is built).
    $PIP install -q "setuptools<70"
    $PIP download -q --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$build"
    tar -xzf "$build"/mmcv-$MMCV_VERSION.tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # torch 2.14's headers demand C++20.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
    (cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} \
        "$VPY" -m pip wheel -q --no-build-isolation --no-deps . -w "$WHEEL_DIR")
    rm -rf "$build"
    wheel=$(ls "$WHEEL_DIR"/mmcv-$MMCV_VERSION-*.whl | head -n1)
    echo "[setup] cached $wheel"
  else
    echo "[setup] using cached $wheel"
  fi
  $PIP install -q --no-deps "$wheel"
  # mmcv's own dependencies (without re-resolving mmcv itself)
  $PIP install -q addict packaging Pillow pyyaml yapf opencv-python
fi

$PIP install -q -r requirements/mminstall.txt -r requirements/runtime.txt -r requirements/tests.txt
# Also compiles mmens._ext, the C++ CPU fusion kernels (about 1 minute the first time, seconds
# after: ninja reuses build/). A failed build stops set-up here: mmens never falls back silently
# at install time.
echo "[setup] installing mmens and building its C++ fusion kernel (mmens._ext)"
if ! $PIP install -q --no-deps --no-build-isolation -e .; then
  echo "[setup] ERROR: building the C++ fusion kernel mmens/ops/csrc failed (see the compiler output above); needs g++ with OpenMP" >&2
  exit 1
fi
"$VPY" -c "import torch, mmens._ext" || { echo "[setup] ERROR: mmens._ext was built but does not import" >&2; exit 1; }
"$VPY" -c "import mmens, mmcv, mmdet, mmengine, torch; print('[setup] ok: mmens', mmens.__version__, '| torch', torch.__version__, '| mmcv', mmcv.__version__, '| mmengine', mmengine.__version__, '| mmdet', mmdet.__version__)"
echo "[setup] done in $(( $(date +%s) - start )) s"
