#!/bin/bash
# usage: scripts/real_benchmark.sh [DATA_DIR (from make-real-benchmark)] [CHECKPOINT_OUT]
# the judged commands on the digits benchmark: train with no flags, batch predict, accuracy + ECE from the CSV
set -e
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-.venv/bin/python}
D=${1:-data/digits}; M=${2:-runs/m-digits}
rm -rf $M "$(dirname $M)/.$(basename $M).resume"
/usr/bin/time -f "train wall %e s" nice -n 5 $PY -m mmdemo train --csv $D/train.csv --out $M 2> >(grep -v "it/s\]" >&2)
/usr/bin/time -f "predict wall %e s" nice -n 5 $PY -m mmdemo predict --checkpoint $M --csv $D/test.csv --out $M-pred.csv 2>&1 | tail -2
$PY - $M-pred.csv <<'PYEOF'
import csv, sys
from mmdemo.metrics import expected_calibration_error
rows = list(csv.DictReader(open(sys.argv[1])))
ok = [r["prediction"] == r["label"] for r in rows]
conf = [float(r["confidence"]) for r in rows]
print({"rows": len(rows), "errors": sum(bool(r["error"]) for r in rows), "accuracy": sum(ok) / len(ok),
       "ece15": expected_calibration_error(conf, ok), "mean_confidence": sum(conf) / len(conf)})
PYEOF
