"""Training speed on cached features: samples per second of one training step (forward,
backward, AdamW) of the default fusion and head, at each image size.

With both encoders frozen and cached (the recipe's default) an epoch costs only this step, so
these figures decide how long a fine-tune takes: at 64 px the fusion reads a 4x4 grid of
regions, at 128 px 8x8, at 224 px 14x14. Random inputs of the shapes training sees (the
encoder's stride-16 feature map, the pixels, MiniLM states of a 12-token question, three
questions an image as in the real-data benchmarks); the same work as ``train`` minus reading
the cache.

    python -m mmdemo bench-train                     # 64, 128 and 224 px
    python -m mmdemo bench-train --sizes 128 --threads 1
    python -m mmdemo bench-train --sizes 224 --region-pool 2   # 224 px read in 7x7 regions
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..model.classifier import ModelConfig
from ..model.encoders import LITE0_CUTS
from ..model.fusion import CrossModalFusion
from ..training.contrastive import ContrastiveLoss

TEXT_DIM, TOKENS = 384, 12  # all-MiniLM-L6-v2 states of a short question
QUESTIONS_PER_IMAGE = 3


def step_samples_per_s(
    image_size: int,
    batch_size: int = 64,
    steps: int = 20,
    threads: int | None = None,
    seed: int = 0,
    contrastive: float = 0.0,
    region_pool: int = 1,
) -> dict:
    """Samples per second of the training step at ``image_size`` (the median of ``steps`` steps
    after 3 warm-up steps), with the regions the fusion reads; ``contrastive``: the weight of the
    image–text contrastive loss added as ``train --contrastive`` adds it (0: without);
    ``region_pool``: the encoder's regions pooled as ``train --region-pool`` pools them; torch's
    thread count and random generators are left as they were."""
    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            if threads:
                torch.set_num_threads(threads)
            torch.manual_seed(seed)
            config = ModelConfig(labels=[str(i) for i in range(14)], image_size=image_size, region_pool=region_pool)
            channels = LITE0_CUTS[16][1]
            fusion = CrossModalFusion(
                channels, TEXT_DIM, config.fusion_dim, config.fusion_heads, config.fusion_layers,
                config.region_layers, config.dropout, patch_size=16 * region_pool,
                position_readout=config.position_readout,
            )  # fmt: skip
            head = torch.nn.Sequential(
                torch.nn.Linear(2 * config.fusion_dim, config.fusion_dim),
                torch.nn.GELU(),
                torch.nn.Linear(config.fusion_dim, len(config.labels)),
            )
            params = list(fusion.parameters()) + list(head.parameters())
            loss_module = ContrastiveLoss(config.fusion_dim) if contrastive else None
            if loss_module is not None:
                params += list(loss_module.parameters())
            optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)
            images = -(-batch_size // QUESTIONS_PER_IMAGE)
            grid = config.grid_size
            feature_map = torch.randn(images, channels, grid, grid)  # (U, C, h, w)
            pixels = torch.randn(images, 3, image_size, image_size)  # (U, 3, S, S)
            text_states = torch.randn(batch_size, TOKENS, TEXT_DIM)  # (B, T, E)
            mask = torch.ones(batch_size, TOKENS, dtype=torch.long)
            image_index = torch.arange(batch_size) // QUESTIONS_PER_IMAGE  # (B,)
            drop_image = torch.zeros(batch_size, dtype=torch.bool)
            targets = torch.randint(len(config.labels), (batch_size,))
            fusion.train()

            def step() -> None:
                summary, _, _ = fusion(feature_map, text_states, mask, drop_image, None, image_index, pixels)
                loss = F.cross_entropy(head(summary), targets)
                if loss_module is not None:
                    per_row = loss_module(fusion, feature_map, pixels, text_states, mask, image_index)
                    loss = loss + contrastive * per_row.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            for _ in range(3):
                step()
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            median = sorted(times)[len(times) // 2]
            return {
                "image_size": image_size,
                "region_pool": region_pool,
                "contrastive": contrastive,
                "regions": grid * grid,
                "batch_size": batch_size,
                "threads": torch.get_num_threads(),
                "step_ms": round(1000 * median, 1),
                "samples_per_s": round(batch_size / median, 1),
            }
        finally:
            torch.set_num_threads(before)
