"""The frozen-encoder feature cache: a data set's inputs prepared once for training, scope
fitting, evaluation and the benchmarks.

Speed on a CPU comes from encoding each input once:
- every image is decoded and resized once (uint8 in memory) and, when the image encoder is
  frozen, encoded once; the same for every distinct text and a frozen text encoder;
- batches group the rows of the same image, so an image with 20 questions is encoded once
  per step even when its encoder is trained;
- stage 2 (``cache_below``) computes once, per augmented copy, what lies below the image
  encoder's trained top blocks, so a step runs only those blocks.

Under ``torchrun`` each process encodes its share and every process gets the whole cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..datasets.csv_table import Example
from ..device import autocast
from ..imaging import decode_image
from ..model.classifier import ModelConfig, MultimodalClassifier
from ..model.encoders import load_tokenizer
from ..model.preprocess import image_to_uint8, normalize_pixels, tokenize
from . import distributed
from .augment import IDENTITY, augment, augment_views
from .settings import Progress, Stopped, TrainSettings

# the preparation phases (progress events' "stage"), in the words a status line shows them
PHASE_WORDS = {
    "load images": "reading the images",
    "encode images": "encoding the images",
    "encode augmented copies": "encoding augmented copies of the images",
    "tokenize texts": "reading the questions",
    "encode texts": "encoding the questions",
}
TEXT_CHUNK = 1024  # distinct texts tokenized between two progress events and stop checks
ENCODE_CHUNK = 256  # distinct texts encoded (frozen text encoder) per forward


class Encoded:
    """The inputs of a dataset prepared once: uint8 images per distinct image, token ids per
    distinct text, and encoder outputs for frozen encoders. Each phase runs in chunks, with a
    progress event (``done``/``total``) and a ``should_stop`` check after each, so a large
    training set shows where it is and Stop ends it within one chunk (``Stopped``)."""

    def __init__(
        self,
        model: MultimodalClassifier,
        examples: list[Example],
        device: torch.device,
        progress: Progress,
        ctx: distributed.Context = distributed.SINGLE,
        should_stop: Callable[[], bool] | None = None,
    ):
        """Under torchrun (``ctx``) each process decodes and encodes its share of the images and
        texts, and every process gets the whole cache. ``should_stop`` is asked between chunks
        (one process only: under torchrun a stop arrives between epochs)."""
        config = model.config
        stop = should_stop if should_stop is not None and not ctx.distributed else (lambda: False)

        def step(stage: str, done: int, total: int) -> None:
            progress({"stage": stage, "done": done, "total": total})
            if done < total and stop():  # between two chunks (a one-chunk phase is not interrupted)
                raise Stopped(
                    f"stopped while preparing the data ({PHASE_WORDS.get(stage, stage)} {done:,}/{total:,}), before the"
                    " first training step; nothing was saved"
                )

        self.image_index: dict = {}
        self.text_index: dict = {}
        for e in examples:
            self.image_index.setdefault(e.image, len(self.image_index))
            self.text_index.setdefault(e.text, len(self.text_index))
        self.rows_image = torch.tensor([self.image_index[e.image] for e in examples])
        self.rows_text = torch.tensor([self.text_index[e.text] for e in examples])
        self.labels = [e.label for e in examples]

        paths = list(self.image_index)

        def load(lo: int, hi: int) -> torch.Tensor:
            images = []
            for i in range(lo, hi):
                images.append(image_to_uint8(decode_image(paths[i]), config))
                if (i - lo + 1) % 200 == 0 or i + 1 == hi:
                    step("load images", i - lo + 1, hi - lo)
            return torch.stack(images)

        self.pixels = ctx.map_concat(len(paths), load)  # (N_img, 3, S, S) uint8
        texts = list(self.text_index)
        self.input_ids, self.attention_mask = _tokenize_in_chunks(texts, config, step)  # (N_txt, T)

        self.features = self.text_states = None
        model.eval()
        with torch.no_grad(), autocast(device):
            if "image_encoder" in config.frozen:

                def encode_images(lo: int, hi: int) -> torch.Tensor:
                    chunks = []
                    for start in range(lo, hi, 64):
                        px = normalize_pixels(self.pixels[start : min(start + 64, hi)], config).to(device)
                        chunks.append(model.encode_image(px).float().cpu())
                        step("encode images", start - lo + len(px), hi - lo)
                    return torch.cat(chunks)

                self.features = ctx.map_concat(len(self.pixels), encode_images)  # (N_img, C, h, w)
            if "text_encoder" in config.frozen:

                def encode_texts(lo: int, hi: int) -> torch.Tensor:
                    chunks = []
                    for start in range(lo, hi, ENCODE_CHUNK):
                        ids = self.input_ids[start : min(start + ENCODE_CHUNK, hi)].to(device)
                        mask = self.attention_mask[start : min(start + ENCODE_CHUNK, hi)].to(device)
                        chunks.append(model.encode_text(ids, mask).float().cpu())
                        step("encode texts", start - lo + len(ids), hi - lo)
                    return torch.cat(chunks)

                self.text_states = ctx.map_concat(len(texts), encode_texts)  # (N_txt, T, E)
        # stage 2: the image encoder's output below its ``top`` trained blocks, per copy
        self.top = 0
        self.below: torch.Tensor | None = None  # (V, N_img, C, h, w)
        self.views = IDENTITY.expand(1, len(self.pixels), len(IDENTITY))  # (V, N_img, augment.PARAMS)
        self.view = torch.zeros(len(self.pixels), dtype=torch.long)  # the copy each image shows now

    def cache_below(
        self,
        model: MultimodalClassifier,
        top: int,
        settings: TrainSettings | None,
        device: torch.device,
        progress: Progress,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Compute once what lies below the image encoder's ``top`` trained blocks, for every
        image and (with ``settings``' augmentation) its augmented copies: stage 2's input, or
        with ``top`` 0 the frozen encoder's whole output for an augmented stage 1.
        ``should_stop`` is asked between chunks (before the first training step only: it
        raises ``Stopped``)."""
        config = model.config
        if settings is not None and settings.augment_views > 1:
            generator = torch.Generator().manual_seed(settings.seed + 2)  # the same copies after a resume
            self.views = augment_views(len(self.pixels), settings, generator)
        else:
            self.views = IDENTITY.expand(1, len(self.pixels), len(IDENTITY))
        self.top, self.features, self.view = top, None, torch.zeros(len(self.pixels), dtype=torch.long)
        model.eval()
        copies = []
        with torch.no_grad(), autocast(device):
            for v, params in enumerate(self.views):
                chunks = []
                for start in range(0, len(self.pixels), 64):
                    index = torch.arange(start, min(start + 64, len(self.pixels)))
                    px = normalize_pixels(augment(self.pixels[index], params[index]), config).to(device)
                    chunks.append(model.image_encoder.forward_below(px, top).float().cpu())
                    done, total = v * len(self.pixels) + start + len(px), len(self.views) * len(self.pixels)
                    progress({"stage": "encode augmented copies", "done": done, "total": total})
                    if should_stop is not None and done < total and should_stop():
                        raise Stopped(
                            f"stopped while preparing the data (encoding augmented copies {done:,}/{total:,}), before the"
                            " first training step; nothing was saved"
                        )
                copies.append(torch.cat(chunks))
        self.below = torch.stack(copies)

    def draw_views(self, generator: torch.Generator) -> None:
        """The copy of each image the next epoch shows."""
        self.view = torch.randint(len(self.views), (len(self.pixels),), generator=generator)

    def batch(self, model: MultimodalClassifier, rows: torch.Tensor, device: torch.device):
        """Feature maps, text states and mask for the given rows; trained encoders run here."""
        config = model.config
        img_ids, img_inverse = torch.unique(self.rows_image[rows], return_inverse=True)
        view = self.view[img_ids]
        pixels = (
            self.pixels[img_ids] if self.below is None else augment(self.pixels[img_ids], self.views[view, img_ids])
        )
        px = normalize_pixels(pixels, config).to(device).contiguous(memory_format=torch.channels_last)
        if self.below is not None:
            feature_map = model.pool_regions(
                model.image_encoder.forward_top(self.below[view, img_ids].to(device), self.top)
            )
        elif self.features is not None:
            feature_map = self.features[img_ids].to(device)
        else:
            feature_map = model.encode_image(px)
        # feature_map (U, C, h, w), one per distinct image; img_inverse (B,) maps rows to it

        txt = self.rows_text[rows]
        mask = self.attention_mask[txt]
        length = int(mask.sum(1).max())
        mask = mask[:, :length].to(device)
        if self.text_states is not None:
            text_states = self.text_states[txt, :length].to(device)
        else:
            text_states = model.encode_text(self.input_ids[txt, :length].to(device), mask)
        return feature_map, px, text_states, mask, img_inverse.to(device)


def _tokenize_in_chunks(texts: list[str], config: ModelConfig, step) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and masks of ``texts``, TEXT_CHUNK at a time (``step`` after each), padded to
    the longest text of all, as one ``tokenize`` call would give."""
    tokenizer = load_tokenizer(config.text_model)
    ids, masks = [], []
    for start in range(0, len(texts), TEXT_CHUNK):
        tb = tokenize(tokenizer, texts[start : start + TEXT_CHUNK], config.max_tokens)
        ids.append(tb.input_ids)
        masks.append(tb.attention_mask)
        step("tokenize texts", start + len(tb.input_ids), len(texts))
    length = max(t.shape[1] for t in ids)
    input_ids = torch.full((len(texts), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(texts), length), dtype=torch.long)
    start = 0
    for chunk_ids, chunk_mask in zip(ids, masks):
        input_ids[start : start + len(chunk_ids), : chunk_ids.shape[1]] = chunk_ids
        attention_mask[start : start + len(chunk_ids), : chunk_mask.shape[1]] = chunk_mask
        start += len(chunk_ids)
    return input_ids, attention_mask
