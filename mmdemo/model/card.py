"""The model card shown inside the app: Markdown rendered from a checkpoint's config.json.

A pure function of the stored config (labels, scope block, training record with its
benchmark, calibration and faithfulness figures); it reads no weights and runs no model.
"""

from __future__ import annotations

from ..metrics import reliability_rows


def _pct(value) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) else "–"


def _figure(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def task_figures(model: dict, training: dict) -> list[dict]:
    """Each task of a model of several tasks (none for one task): its name, labels, validation
    accuracy, macro-F1 and expected calibration error as served (after its temperature, where
    one was fitted), from the stored config and training record."""
    extra = model.get("extra_tasks") or []
    if not extra:
        return []
    tasks = [(model.get("task") or "label", model.get("labels", []), model.get("temperature", 1.0))]
    tasks += [(t["name"], t["labels"], t["temperature"]) for t in extra]
    records = training.get("tasks") or {}
    out = []
    for name, labels, temperature in tasks:
        record = records.get(name) or {}
        metrics, calibration = record.get("metrics") or {}, record.get("calibration") or {}
        out.append(
            {
                "name": name,
                "labels": list(labels),
                "temperature": temperature,
                "val_accuracy": metrics.get("val_accuracy", (metrics.get("report") or {}).get("accuracy")),
                "val_macro_f1": metrics.get("val_macro_f1", (metrics.get("report") or {}).get("macro_f1")),
                "ece": calibration.get("ece_after"),
                "rows_without_label": record.get("rows_without_label"),
            }
        )
    return out


def task_table(tasks: list[dict]) -> list[str]:
    """The Markdown table of ``task_figures``."""
    lines = [
        "| task | labels | validation accuracy | validation macro-F1 | ECE (15 bins) | temperature |",
        "|---|---|---|---|---|---|",
    ]
    for t in tasks:
        lines.append(
            f"| {t['name']} | {', '.join(t['labels'])} | {_pct(t['val_accuracy'])} | {_figure(t['val_macro_f1'])} "
            f"| {_figure(t['ece'])} | {_figure(t['temperature'], 3)} |"
        )
    return lines


def app_model_card(name: str, data: dict) -> str:
    """Markdown: what the model answers, what it can be asked, how it was trained and measured."""
    model, training, scope = data.get("model", {}), data.get("training", {}), data.get("scope") or {}
    lines = [f"### {name}", "", training.get("description", "An mmdemo image + text classifier."), ""]
    labels = model.get("labels", [])
    tasks = task_figures(model, training)
    if tasks:  # one answer per task
        lines.append(f"**Tasks ({len(tasks)})**, one answer each:")
        lines.append("")
        lines += [f"- **{t['name']}** ({len(t['labels'])}): {', '.join(t['labels'])}" for t in tasks]
    else:
        lines.append(f"**Answers ({len(labels)})**: {', '.join(labels)}")
    lines.append("")
    lines.append(f"**Image input**: resized to {model.get('image_size', '?')} px squares for the image encoder.")
    if scope:
        for slot in scope.get("slots", []):
            lines.append(
                f"**Words a question must use {' or '.join(map(str, slot['counts']))} of**: {', '.join(slot['words'])}"
            )
        lines.append("")
        lines.append(
            f"**Out-of-scope check**: fitted on {scope.get('fitted_on', {}).get('images', '?')} training images and "
            f"{scope.get('fitted_on', {}).get('texts', '?')} distinct training texts; an answer is flagged when "
            "the image is far from the training images, the question uses words or word orders the training "
            "questions never had, or the answer ignores the image."
        )
    else:
        lines.append("**Out-of-scope check**: not fitted for this checkpoint (every input counts as in scope).")
    lines.append("")
    if training.get("data"):
        lines.append(f"**Training data**: {training['data']}")
    if training.get("start_comparison"):  # training/finetune.py start_comparison
        lines.append(f"**Compared with the starting checkpoint**: {training['start_comparison']['summary']}")
    for command in training.get("data_commands", []):
        lines.append(f"- `{command}`")
    lines.append("")

    if tasks:
        lines += ["#### Each task on the validation rows", ""]
        lines += task_table(tasks)
        lines += ["", "The expected calibration error is after the task's own temperature, where one was fitted.", ""]
    bench = training.get("benchmark") or {}
    if bench.get("canonical"):
        sets = [("canonical wording", bench["canonical"]), ("held-out wording", bench.get("held_out_phrasing", {}))]
        kinds = list(bench["canonical"].get("per_type", {}))
        lines += ["#### Accuracy per question kind (fresh scenes)", ""]
        lines.append("| question kind | " + " | ".join(n for n, _ in sets) + " |")
        lines.append("|---|" + "---|" * len(sets))
        for kind in kinds:
            lines.append(f"| {kind} | " + " | ".join(_pct(s.get("per_type", {}).get(kind)) for _, s in sets) + " |")
        lines.append("| **all** | " + " | ".join(_pct(s.get("accuracy")) for _, s in sets) + " |")
        lines.append("")
    pointing = bench.get("pointing") or {}
    if pointing:
        lines += ["#### Pointing (heatmap peak on the asked object, non-relational questions)", ""]
        lines += ["| method | peak in box |", "|---|---|"]
        for method, p in pointing.items():
            lines.append(f"| {method} | {_pct(p.get('non_relational_peak_in_box'))} |")
        lines.append("")
    calibration = training.get("calibration") or {}
    if calibration:
        lines += ["#### Calibration", ""]
        lines.append(
            f"Temperature {calibration.get('temperature', model.get('temperature', 1.0))}; expected calibration "
            f"error (15 bins) {calibration.get('ece_before', float('nan')):.4f} before, "
            f"{calibration.get('ece_after', float('nan')):.4f} after, on {calibration.get('data', 'validation data')}."
        )
        bins = calibration.get("bins") or reliability_rows(calibration.get("reliability_after"))
        if bins:
            lines += ["", "| confidence bin | rows | mean confidence | accuracy |", "|---|---|---|---|"]
            for b in bins:
                lines.append(
                    f"| {b['low']:.2f}–{b['high']:.2f} | {b['n']} | {b['confidence']:.3f} | {b['accuracy']:.3f} |"
                )
        lines.append("")
    faithfulness = bench.get("faithfulness") or training.get("faithfulness") or {}
    methods = {m: f for m, f in faithfulness.get("methods", faithfulness).items() if isinstance(f, dict)}
    if methods:
        lines += ["#### Faithfulness of the heatmaps", ""]
        lines.append(
            f"On {faithfulness.get('rows', '?')} questions about fresh scenes. Deletion: the answer's probability "
            "as the heatmap's cells are blanked, hottest first (area under the curve; lower is more faithful), "
            "against a random order. Insertion: cells put back onto a blank image, hottest first (higher is more "
            "faithful). Model randomisation (Adebayo et al. 2018): rank correlation between each heatmap and the "
            "heatmap of the same model with its fusion weights re-initialised (near 0: the heatmap depends on "
            "what the model learned, as it should; near 1: it would look the same untrained)."
        )
        lines += [
            "",
            "| method | deletion area | random-order deletion area | insertion area | randomisation rank corr. |",
        ]
        lines.append("|---|---|---|---|---|")
        for method, f in methods.items():
            cells = [f.get(k, "–") for k in ("deletion_auc", "random_deletion_auc", "insertion_auc")]
            cells.append(f.get("randomisation_rank_correlation", "–"))
            lines.append(f"| {method} | " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
