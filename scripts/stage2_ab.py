"""A/B of the recipe's two stages on a real-data benchmark, in one run: the test accuracy of
stage 1's best epoch (frozen, cached encoders) and of the best epoch overall after stage 2 (the
top blocks of the image encoder trained too), with the stages' record.

usage: PYTHONPATH=. python scripts/stage2_ab.py DATA_DIR STAGE1_EPOCHS STAGE2_BLOCKS '{"stage2_epochs": 4, ...}'
(DATA_DIR from `python -m mmdemo make-real-benchmark`; the JSON holds more TrainSettings.)
Fixed epochs, no time limit, so both stages run whatever the machine's load."""

import copy
import json
import sys
import time

from mmdemo.datasets.csv_table import read_csv
from mmdemo.model.classifier import ModelConfig
from mmdemo.training.loop import train
from mmdemo.training.scoring import evaluate_model
from mmdemo.training.settings import TrainSettings

data, s1_epochs, blocks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
ds, test = read_csv(f"{data}/train.csv"), read_csv(f"{data}/test.csv")
settings = TrainSettings(
    epochs=s1_epochs, batch_size=64, lr=1e-3, freeze=["image_encoder", "text_encoder"], patience=4,
    class_weights=False, cpu_threads=1, stage2_blocks=blocks, **extra,
)  # fmt: skip
config = ModelConfig(labels=ds.labels, image_size=64)
stage1 = {}


def on_best(model, record):
    if record["training_stage"] == 1:  # stage 1's best epoch so far
        stage1["model"] = copy.deepcopy(model).cpu().eval()


def progress(event):
    if event["stage"] == "epoch":
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in event.items() if k != "stage"}))


start = time.time()
result = train(ds, None, settings, config=config, progress=progress, on_best=on_best)
print("stages", json.dumps(result.stages))
for name, model in (("stage1", stage1["model"]), ("final", result.model)):
    report = evaluate_model(model, test.examples, "cpu")  # temperature 1: not calibrated here
    print(name, "test acc", round(report["accuracy"], 4), "ece(T=1)", round(report["ece"], 4), flush=True)
print("seconds", round(time.time() - start))
