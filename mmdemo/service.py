"""The service API that the CLI and the UI call: load a checkpoint, predict, explain.

``Predictor`` owns one model on one device, in eval mode, prepared for inference (conv+BN
folded, channels_last). It never mutates the checkpoint it came from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import scope as scope_stats
from .checkpoint import load_checkpoint
from .device import autocast, resolve_device
from .encoders import fuse_conv_bn, load_tokenizer
from .explain import DEFAULT_METHOD, METHODS, Explanation, explain, gradient_relevance, raw_relevance
from .imaging import ImageSource, decode_image
from .model import MultimodalClassifier
from .preprocess import TextBatch, image_to_tensor, tokenize


@dataclass
class Prediction:
    label: str
    scores: dict[str, float]  # label -> probability, summing to 1
    explanation: Explanation
    truncated: bool  # the text was cut to the encoder's token limit
    image_size: tuple[int, int]  # (width, height) of the decoded input image
    forward_ms: float  # model time for the batch this sample was in (preprocessing excluded)
    scope: dict = field(default_factory=lambda: scope_stats.assess(None, None, None, [], {}, 1.0))

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
        }


class Predictor:
    def __init__(
        self,
        model: MultimodalClassifier,
        device: torch.device | str | None = None,
        scope: scope_stats.ScopeStats | None = None,
    ):
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.config = model.config
        # the predictor owns this model and only serves with it: fold BatchNorm into the
        # convs and use the faster memory layout (the checkpoint on disk is untouched)
        model = model.eval()
        fuse_conv_bn(model.image_encoder)
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        self.tokenizer = load_tokenizer(self.config.text_model)
        self.labels = list(self.config.labels)
        self.scope = scope  # out-of-scope statistics (None: every input counts as in scope)
        self.embedding_table = scope_stats.embedding_table(self.model.text_encoder, self.tokenizer.vocab_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None) -> Predictor:
        return cls(load_checkpoint(path), resolve_device(device), scope_stats.load_scope(path))

    # -- preprocessing -------------------------------------------------------------------
    def pixels(self, images: list) -> torch.Tensor:
        batch = torch.stack([image_to_tensor(image, self.config) for image in images])  # (B, 3, S, S)
        return batch.to(self.device).contiguous(memory_format=torch.channels_last)

    def tokens(self, texts: list[str]) -> TextBatch:
        return tokenize(self.tokenizer, texts, self.config.max_tokens)

    # -- inference -----------------------------------------------------------------------
    def predict(self, image: ImageSource, text: str, method: str = DEFAULT_METHOD) -> Prediction:
        """Classify one (image, text) pair and explain the answer."""
        return self.predict_batch([decode_image(image)], [text], method)[0]

    def predict_batch(self, images: list, texts: list[str], method: str = DEFAULT_METHOD) -> list[Prediction]:
        """Classify decoded RGB images with their texts, one explanation per sample."""
        if method not in METHODS:
            raise ValueError(f"explanation method must be one of {METHODS}, got {method!r}")
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        text_batch = self.tokens(texts)
        pixels = self.pixels(images)
        ids, mask = text_batch.input_ids.to(self.device), text_batch.attention_mask.to(self.device)
        start = time.perf_counter()
        with autocast(self.device):
            with torch.no_grad():
                feature_map = self.model.encode_image(pixels)
                text_states = self.model.encode_text(ids, mask)
            with torch.set_grad_enabled(method == "gradient"):
                out = self.model.forward_fusion(feature_map, text_states, mask, pixels=pixels)
                logits = out.logits.float()
                target = logits.argmax(-1)
                if method == "gradient":
                    # samples are independent, so the gradient of the summed target logits
                    # gives each sample the gradient of its own target logit
                    grads = torch.autograd.grad(
                        logits.gather(1, target[:, None]).sum(), out.cross_attention + out.text_attention
                    )
        probs = (logits.detach() / self.config.temperature).softmax(-1).cpu()
        scopes = self.assess_scope(feature_map, text_states, mask, pixels, probs, texts)
        forward_ms = (time.perf_counter() - start) * 1000
        n_layers = len(out.cross_attention)
        results = []
        for i, image in enumerate(images):
            cross = tuple(a[i].detach().cpu() for a in out.cross_attention)
            text_self = tuple(a[i].detach().cpu() for a in out.text_attention)
            if method == "gradient":
                g = [x[i].cpu() for x in grads]
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
            scores = {label: float(p) for label, p in zip(self.labels, probs[i])}
            results.append(
                Prediction(
                    label=self.labels[int(target[i])],
                    scores=scores,
                    explanation=explanation,
                    truncated=text_batch.truncated[i],
                    image_size=image.size,
                    forward_ms=forward_ms,
                    scope=scopes[i],
                )
            )
        return results

    @torch.no_grad()
    def assess_scope(self, feature_map, text_states, mask, pixels, probs, texts: list[str]) -> list[dict]:
        """Each sample's out-of-scope assessment (scope.py) from the encoders' outputs and the
        answer distribution; one more fusion pass gives the answer with the image masked out."""
        if self.scope is None:
            return [scope_stats.assess(None, None, None, [], {}, 1.0) for _ in texts]
        drop = torch.ones(len(texts), dtype=torch.bool, device=self.device)
        with autocast(self.device):
            text_only = self.model.forward_fusion(feature_map, text_states, mask, drop_image=drop, pixels=pixels)
        text_only = (text_only.logits.float() / self.config.temperature).softmax(-1).cpu()
        reliance = scope_stats.total_variation(probs, text_only)
        image_vecs = scope_stats.pooled_image(feature_map).cpu()
        text_vecs = scope_stats.pooled_text(text_states, mask).cpu()
        results = []
        for i, text in enumerate(texts):
            ws = scope_stats.words(text)
            synonyms = scope_stats.synonyms_for(ws, self.scope, self.embedding_table, self.tokenizer)
            results.append(
                scope_stats.assess(self.scope, image_vecs[i], text_vecs[i], ws, synonyms, float(reliance[i]))
            )
        return results

    @torch.inference_mode()
    def probabilities(self, images: list, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(B, L) calibrated probabilities of decoded images with their texts, no explanation
        (what faithfulness curves need for many masked copies of one image)."""
        out = []
        for start in range(0, len(images), batch_size):
            text_batch = self.tokens(texts[start : start + batch_size])
            pixels = self.pixels(images[start : start + batch_size])
            ids, mask = text_batch.input_ids.to(self.device), text_batch.attention_mask.to(self.device)
            with autocast(self.device):
                feature_map = self.model.encode_image(pixels)
                text_states = self.model.encode_text(ids, mask)
                logits = self.model.forward_fusion(feature_map, text_states, mask, pixels=pixels).logits.float()
            out.append((logits / self.config.temperature).softmax(-1).cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def modality_contributions(self, image: ImageSource, text: str) -> dict[str, dict[str, float]]:
        """Probabilities with both modalities, the image only, and the text only."""
        pixels = self.pixels([decode_image(image)])
        text_batch = self.tokens([text])
        ids = text_batch.input_ids.to(self.device).expand(3, -1)
        mask = text_batch.attention_mask.to(self.device).expand(3, -1)
        drop_image = torch.tensor([False, False, True], device=self.device)
        drop_text = torch.tensor([False, True, False], device=self.device)
        with autocast(self.device):
            feature_map = self.model.encode_image(pixels)  # one image, shared by the 3 rows
            text_states = self.model.encode_text(ids[:1], mask[:1]).expand(3, -1, -1)
            logits = self.model.forward_fusion(
                feature_map,
                text_states,
                mask,
                drop_image,
                drop_text,
                torch.zeros(3, dtype=torch.long, device=self.device),
                pixels,
            ).logits
        probs = (logits.float() / self.config.temperature).softmax(-1).cpu()
        names = ("both", "image only", "text only")
        return {name: {label: float(p) for label, p in zip(self.labels, row)} for name, row in zip(names, probs)}
