"""The service API that the CLI and the UI call: load a checkpoint, predict, explain.

``Predictor`` owns one model on one device, in eval mode, prepared for inference (conv+BN
folded, channels_last) and served by an engine (inference/engines.py: ONNX Runtime on the CPU, PyTorch
on a GPU). It never mutates the checkpoint it came from. ``analyse`` gives the answer, its
explanation and the modality contributions from one encoder pass. Every prediction carries its
out-of-scope assessment (scope.py), computed from the same pass: the pooled encoder features
and the text-only answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..device import autocast, resolve_device
from ..explain.methods import DEFAULT_METHOD, METHODS, Explanation, explain, gradient_relevance, raw_relevance
from ..imaging import ImageSource, decode_image
from ..model.checkpoint import load_checkpoint
from ..model.classifier import ModelOutput, MultimodalClassifier
from ..model.encoders import fuse_conv_bn, load_tokenizer
from ..model.preprocess import TextBatch, image_to_tensor, tokenize
from . import scope as scope_stats
from .engines import MicroBatcher, Rows, make_engine


@dataclass
class Prediction:
    label: str
    scores: dict[str, float]  # label -> probability, summing to 1
    explanation: Explanation
    truncated: bool  # the text was cut to the encoder's token limit
    image_size: tuple[int, int]  # (width, height) of the decoded input image
    forward_ms: float  # model time for the batch this sample was in (preprocessing excluded)
    scope: dict = field(default_factory=lambda: scope_stats.assess(None, None, None, [], {}, 1.0))
    # every task's answer, the first task's (label, scores) first: name -> {label, confidence,
    # scores, in_scope}; the explanation is of ``explained_task``'s answer
    tasks: dict[str, dict] = field(default_factory=dict)
    explained_task: str = ""

    @property
    def in_scope(self) -> bool:
        return bool(self.scope["in_scope"])

    @property
    def confidence(self) -> float:
        return self.scores[self.label]

    def to_json(self) -> dict:
        """What the CLI prints and the API returns: plain JSON types, heatmap at grid size."""
        e = self.explanation
        return {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "in_scope": self.in_scope,
            "scope": self.scope,
            "scores": self.scores,
            "tokens": e.words,
            "token_scores": e.word_scores,
            "heatmap": [[round(float(v), 4) for v in row] for row in e.heatmap],
            "peak_xy": [round(e.peak_xy[0], 1), round(e.peak_xy[1], 1)],
            "method": e.method,
            "truncated": self.truncated,
            "image_size": list(self.image_size),
            "tasks": self.tasks,
            "explained_task": self.explained_task,
        }


class Analysis(NamedTuple):
    """What the Predict tab shows, from one encoder pass."""

    prediction: Prediction
    contributions: dict[str, dict[str, float]]  # "both" / "image only" / "text only" -> label -> probability


class Predictor:
    def __init__(
        self,
        model: MultimodalClassifier,
        device: torch.device | str | None = None,
        backend: str | None = None,
        dtype: str | None = None,
        scope: scope_stats.ScopeStats | None = None,
    ):
        """``scope``: the checkpoint's out-of-scope statistics (None: every input counts as in
        scope); ``backend``: "auto" (default, or $MMDEMO_BACKEND), "onnxruntime" or "torch";
        ``dtype``: the autocast type on a GPU ("bf16", "fp16", "fp32"; None picks)."""
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.config = model.config
        # the predictor owns this model and only serves with it: fold BatchNorm into the
        # convs and use the faster memory layout (the checkpoint on disk is untouched)
        model = model.eval()
        fuse_conv_bn(model.image_encoder)
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        # answers and raw explanations go through the engine (ONNX Runtime on the CPU when
        # installed); gradient explanations need autograd, so they run in PyTorch
        self.dtype = dtype
        self.engine = make_engine(self.model, self.device, backend, dtype)
        self.backend = self.engine.name
        self.tokenizer = load_tokenizer(self.config.text_model)
        self.labels = list(self.config.labels)
        self.task_names = self.config.task_names()
        self.scope = scope
        self.embedding_table = scope_stats.embedding_table(self.model.text_encoder, self.tokenizer.vocab_size)
        # requests that arrive together (the app's concurrent /predict calls) share a forward
        self._batcher = MicroBatcher(lambda items, key: self.analyse_batch(*zip(*items), *key))

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | None = None, backend: str | None = None, dtype: str | None = None
    ) -> Predictor:
        return cls(load_checkpoint(path), resolve_device(device), backend, dtype, scope_stats.load_scope(path))

    # -- preprocessing -------------------------------------------------------------------
    def pixels(self, images: list) -> torch.Tensor:
        batch = torch.stack([image_to_tensor(image, self.config) for image in images])  # (B, 3, S, S)
        return batch.to(self.device).contiguous(memory_format=torch.channels_last)

    def tokens(self, texts: list[str]) -> TextBatch:
        return tokenize(self.tokenizer, texts, self.config.max_tokens)

    # -- inference -----------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ModelOutput:
        """The serving path's forward, one row per (image, text) pair (what ``bench`` times)."""
        return self.engine(Rows.plain(pixels, input_ids.to(self.device), attention_mask.to(self.device))).output

    def predict(
        self, image: ImageSource, text: str, method: str = DEFAULT_METHOD, task: str | None = None
    ) -> Prediction:
        """Classify one (image, text) pair and explain the answer (of ``task``: default the first)."""
        return self.predict_batch([decode_image(image)], [text], method, task)[0]

    def predict_batch(
        self, images: list, texts: list[str], method: str = DEFAULT_METHOD, task: str | None = None
    ) -> list[Prediction]:
        """Classify decoded RGB images with their texts, one explanation per sample."""
        return [prediction for prediction, _ in self._run(images, texts, method, modalities=False, task=task)]

    def analyse(self, image: ImageSource, text: str, method: str = DEFAULT_METHOD, task: str | None = None) -> Analysis:
        """Answer, explanation and modality contributions from one encoder pass. Calls made
        at the same time from several threads are batched together."""
        image = decode_image(image)
        self.tokens([text])  # a bad text fails here, alone, not in a batch with others
        self.task_index(task)  # an unknown task too
        return self._batcher((image, text), (method, task))

    def analyse_batch(
        self, images: list, texts: list[str], method: str = DEFAULT_METHOD, task: str | None = None
    ) -> list[Analysis]:
        """``task``: the task whose answer is explained, and whose contributions are given."""
        return [Analysis(p, c) for p, c in self._run(images, texts, method, modalities=True, task=task)]

    def task_index(self, task: str | None) -> int:
        """The index of a task by name (None: the first)."""
        if task is None:
            return 0
        if task not in self.task_names:
            raise ValueError(f"this model has no task {str(task)[:60]!r}; its tasks are {', '.join(self.task_names)}")
        return self.task_names.index(task)

    def modality_contributions(self, image: ImageSource, text: str) -> dict[str, dict[str, float]]:
        """Probabilities with both modalities, the image only, and the text only."""
        return self.analyse_batch([decode_image(image)], [text])[0].contributions

    @torch.inference_mode()
    def probabilities(self, images: list, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(B, L) calibrated probabilities of decoded images with their texts, no explanation
        (what faithfulness curves need for many masked copies of one image)."""
        out = []
        for start in range(0, len(images), batch_size):
            text_batch = self.tokens(texts[start : start + batch_size])
            ids, mask = text_batch.input_ids.to(self.device), text_batch.attention_mask.to(self.device)
            logits = self.forward(self.pixels(images[start : start + batch_size]), ids, mask).logits
            out.append((logits.float() / self.config.temperature).softmax(-1).cpu().numpy())
        return np.concatenate(out)

    def _run(
        self, images: list, texts: list[str], method: str, modalities: bool, task: str | None = None
    ) -> list[tuple]:
        """Encode once, fuse the rows asked for, explain each sample: (Prediction, contributions
        or None) per sample. With scope statistics the text-only rows are always fused: "the
        answer ignores the image" compares the answer with them. ``task``: whose answer the
        explanation and the contributions are of (default: the first task's)."""
        explained = self.task_index(task)
        if method not in METHODS:
            raise ValueError(f"explanation method must be one of {METHODS}, got {method!r}")
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        text_batch = self.tokens(texts)
        pixels = self.pixels(images)
        ids, mask = text_batch.input_ids.to(self.device), text_batch.attention_mask.to(self.device)
        start = time.perf_counter()
        with_others = modalities or self.scope is not None
        if method == "gradient":
            out, grads, modality_logits, image_features, text_features = self._fuse_with_gradients(
                pixels, ids, mask, with_others, explained
            )
        else:
            rows = (Rows.with_modalities if with_others else Rows.plain)(pixels, ids, mask)
            served, grads = self.engine(rows), None
            out, image_features, text_features = served
            modality_logits = [logits[len(images) :] for logits in out.task_logits()]
        n = len(images)
        temperatures = self.config.task_temperatures()
        probs = [(logits[:n].float() / t).softmax(-1).cpu() for logits, t in zip(out.task_logits(), temperatures)]
        others = (
            [(logits.float() / t).softmax(-1).cpu() for logits, t in zip(modality_logits, temperatures)]
            if with_others
            else None
        )
        scopes = self._assess_scope(
            texts, image_features, text_features, probs[0], others[0][n:] if with_others else None
        )
        forward_ms = (time.perf_counter() - start) * 1000
        results = []
        for i, image in enumerate(images):
            prediction = self._explain_sample(i, out, grads, probs[0][i], text_batch, mask, image, method, forward_ms)
            prediction.scope = scopes[i]
            prediction.explained_task = self.task_names[explained]
            prediction.tasks = {
                name: self._task_answer(labels, p[i], scopes[i])
                for name, labels, p in zip(self.task_names, self.config.task_labels(), probs)
            }
            contributions = None
            if modalities:
                labels = self.config.task_labels()[explained]
                rows = {
                    "both": probs[explained][i],
                    "image only": others[explained][i],
                    "text only": others[explained][n + i],
                }
                contributions = {name: self._scores(row, labels) for name, row in rows.items()}
            results.append((prediction, contributions))
        return results

    @staticmethod
    def _task_answer(labels: list[str], probs: torch.Tensor, scope: dict) -> dict:
        """One task's answer: its label, confidence and scores; the out-of-scope verdict reads the
        inputs (and the first task's reliance on the image), so it is the same for every task."""
        top = int(probs.argmax())
        return {
            "label": labels[top],
            "confidence": round(float(probs[top]), 6),
            "scores": {label: float(p) for label, p in zip(labels, probs)},
            "in_scope": bool(scope["in_scope"]),
        }

    def _assess_scope(self, texts, image_features, text_features, probs, text_only) -> list[dict]:
        """Each sample's out-of-scope assessment (scope.py) from the pooled encoder features and
        how far the answer moves when the image is masked out."""
        if self.scope is None:
            return [scope_stats.assess(None, None, None, [], {}, 1.0) for _ in texts]
        reliance = scope_stats.total_variation(probs, text_only)
        results = []
        for i, text in enumerate(texts):
            ws = scope_stats.words(text)
            synonyms = scope_stats.synonyms_for(ws, self.scope, self.embedding_table, self.tokenizer)
            image_vec, text_vec = image_features[i].float().cpu(), text_features[i].float().cpu()
            results.append(scope_stats.assess(self.scope, image_vec, text_vec, ws, synonyms, float(reliance[i])))
        return results

    def _fuse_with_gradients(self, pixels, ids, mask, modalities: bool, task: int = 0):
        """Eager forward with the gradient of each sample's target logit (of ``task``) w.r.t. the
        attention; also the pooled encoder features (what the out-of-scope check reads)."""
        n = len(ids)
        with autocast(self.device, self.dtype):
            with torch.no_grad():
                feature_map = self.model.encode_image(pixels)
                text_states = self.model.encode_text(ids, mask)
            with torch.enable_grad():
                out = self.model.forward_fusion(feature_map, text_states, mask, pixels=pixels)
                logits = out.task_logits()[task].float()
                target = logits.argmax(-1)
                # samples are independent, so the gradient of the summed target logits
                # gives each sample the gradient of its own target logit
                grads = torch.autograd.grad(
                    logits.gather(1, target[:, None]).sum(), out.cross_attention + out.text_attention
                )
            modality_logits = None
            if modalities:  # image only (rows 0..n-1), text only (n..2n-1), same encodings
                with torch.no_grad():
                    flags = torch.arange(2 * n, device=self.device) >= n
                    modality_logits = self.model.forward_fusion(
                        feature_map,
                        text_states.repeat(2, 1, 1),
                        mask.repeat(2, 1),
                        drop_image=flags,
                        drop_text=~flags,
                        image_index=torch.arange(n, device=self.device).repeat(2),
                        pixels=pixels,
                    ).task_logits()
        detached = out._replace(
            logits=out.logits.detach().float(),
            extra_logits=tuple(x.detach().float() for x in out.extra_logits),
            cross_attention=tuple(a.detach() for a in out.cross_attention),
            text_attention=tuple(a.detach() for a in out.text_attention),
        )
        features = scope_stats.pooled_image(feature_map), scope_stats.pooled_text(text_states, mask)
        return detached, grads, modality_logits, *features

    def _explain_sample(self, i, out, grads, probs, text_batch, mask, image, method, forward_ms) -> Prediction:
        n_layers = len(out.cross_attention)
        cross = tuple(a[i].float().cpu() for a in out.cross_attention)
        text_self = tuple(a[i].float().cpu() for a in out.text_attention)
        if method == "gradient":
            g = [x[i].float().cpu() for x in grads]
            cross_rel = gradient_relevance(cross, g[:n_layers])
            text_rel = gradient_relevance(text_self, g[n_layers:])
        else:
            cross_rel, text_rel = raw_relevance(cross), raw_relevance(text_self)
        n_tokens = int(mask[i].sum())
        explanation = explain(
            cross_rel[: 1 + n_tokens],
            text_rel[: 1 + n_tokens, : 1 + n_tokens],
            out.grid,
            text_batch.word_ids[i],
            text_batch.words[i],
            image.size,
            method,
        )
        return Prediction(
            label=self.labels[int(probs.argmax())],
            scores=self._scores(probs),
            explanation=explanation,
            truncated=text_batch.truncated[i],
            image_size=image.size,
            forward_ms=forward_ms,
        )

    def _scores(self, probs: torch.Tensor, labels: list[str] | None = None) -> dict[str, float]:
        return {label: float(p) for label, p in zip(labels or self.labels, probs)}
