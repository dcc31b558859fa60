"""The multimodal classifier: config, parts, builder.

``build_model(ModelConfig)`` turns a config into parts and composes them as
``MultimodalClassifier(image_encoder, text_encoder, fusion, head)``. The config carries the
labels and the preprocessing, and is saved beside the weights (see checkpoint.py).

``forward`` is split the way the training engine needs it: ``encode_image`` and
``encode_text`` (costly, cacheable when frozen) and ``forward_fusion`` (cheap, trained).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import EfficientNetLite0, GRUEncoder, MiniLMEncoder, SmallCNN, load_tokenizer, top_block_prefixes
from .fusion import CrossModalFusion

IMAGE_ENCODERS = ("efficientnet_lite0", "small_cnn")
TEXT_ENCODERS = ("minilm", "gru")
PARTS = ("image_encoder", "text_encoder")


@dataclass
class ModelConfig:
    labels: list[str]
    # image encoder and its preprocessing (resize to a square, then (x/255 - mean) / std)
    image_encoder: str = "efficientnet_lite0"
    image_size: int = 224
    image_stride: int = 16  # EfficientNet-Lite0 cut: 16 -> 14x14 regions at 224 px, 32 -> 7x7
    # the encoder's feature map average-pooled by this factor before the fusion: a photo read at
    # 224 px (the encoder's own resolution) in 7x7 regions of stride-16 features costs the fusion
    # what a 112 px image does (1: every region as the encoder gives it)
    region_pool: int = 1
    image_pretrained: bool = True  # start from the packaged ImageNet weights
    cnn_channels: list[int] = field(default_factory=lambda: [32, 64, 96, 128])  # small_cnn only
    pixel_mean: float = 0.5
    pixel_std: float = 0.5
    # text encoder; the tokenizer is always the text model's WordPiece tokenizer
    text_encoder: str = "minilm"
    text_model: str = "minilm"  # the packaged all-MiniLM-L6-v2, or a local folder / hub id
    gru_dim: int = 128  # gru only
    max_tokens: int = 64
    # fusion and head
    fusion_dim: int = 192
    fusion_heads: int = 4
    fusion_layers: int = 3  # text layers: cross-attention to regions, self-attention
    region_layers: int = 2  # region self-attention layers, run once per image
    patch_embedding: bool = True  # add a linear embedding of each region's own pixels
    # the summary also reads where each cross-attention head looked (fusion.py); configs from
    # before it was there load as without it (``from_dict``)
    position_readout: bool = True
    dropout: float = 0.1
    # calibration: probabilities are softmax(logits / temperature); fitted on the validation
    # split after training (1.0 = as trained)
    temperature: float = 1.0
    # pretrained encoders kept frozen: their weights are the packages', so checkpoints
    # reference them by name instead of storing them
    frozen: list[str] = field(default_factory=lambda: list(PARTS))
    # ... except the top blocks of a frozen EfficientNet-Lite0 trained by the recipe's second
    # stage: checkpoints store these blocks and reference the rest of the encoder
    image_tuned_blocks: int = 0
    # encoders trained away from their package's weights (by this or an earlier run): stored
    # even when frozen later, e.g. when a checkpoint whose encoder trained is fine-tuned again
    trained_parts: list[str] = field(default_factory=list)
    # several answers from one model: ``labels`` and ``temperature`` are the first task's, named
    # ``task`` (its label column; "" in checkpoints from before tasks had names); each further
    # task, {"name", "labels", "temperature"}, has its own head reading the same fused summary
    task: str = ""
    extra_tasks: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, labels in [(self.task or "label", self.labels)] + [
            (t["name"], t["labels"]) for t in self.extra_tasks
        ]:
            if len(labels) < 2:
                raise ValueError(f"a classifier needs at least 2 labels, got {labels} for {name!r}")
            if len(set(labels)) != len(labels):
                raise ValueError(f"labels must be unique, got {labels} for {name!r}")
        names = self.task_names()
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        for t in self.extra_tasks:
            if set(t) != {"name", "labels", "temperature"} or not t["temperature"] > 0:
                raise ValueError(f"a task is {{name, labels, temperature > 0}}, got {t}")
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image_encoder must be one of {IMAGE_ENCODERS}, got {self.image_encoder!r}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        for key in ("frozen", "trained_parts"):
            unknown = set(getattr(self, key)) - set(PARTS)
            if unknown:
                raise ValueError(f"{key} may name {PARTS}, got {sorted(unknown)}")
        if not (isinstance(self.region_pool, int) and 1 <= self.region_pool <= 4):
            raise ValueError(f"region_pool must be 1, 2, 3 or 4, got {self.region_pool!r}")
        if self.image_tuned_blocks and self.image_encoder != "efficientnet_lite0":
            raise ValueError("image_tuned_blocks needs the efficientnet_lite0 image encoder")
        self.tuned_prefixes()  # ValueError when out of range

    @property
    def grid_size(self) -> int:
        stride = self.image_stride if self.image_encoder == "efficientnet_lite0" else 2 ** len(self.cnn_channels)
        encoder_grid = -(-self.image_size // stride)  # the 'same' padding rounds up
        return -(-encoder_grid // self.region_pool)

    def referenced_parts(self) -> list[str]:
        """Frozen parts whose weights come from a package, so a checkpoint does not store them."""
        pretrained = {
            "image_encoder": self.image_encoder == "efficientnet_lite0" and self.image_pretrained,
            "text_encoder": self.text_encoder == "minilm",
        }
        return [part for part in PARTS if part in self.frozen and pretrained[part] and part not in self.trained_parts]

    def stores(self, key: str) -> bool:
        """Whether a checkpoint stores the state-dict entry ``key``: everything but the frozen,
        package-referenced encoders, whose tuned top blocks it does store."""
        part, _, rest = key.partition(".")
        if part not in self.referenced_parts():
            return True
        return part == "image_encoder" and rest.startswith(self.tuned_prefixes())

    def tuned_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes, within the image encoder, of its tuned top blocks."""
        if not self.image_tuned_blocks:
            return ()
        return top_block_prefixes(self.image_stride, self.image_tuned_blocks)

    def task_names(self) -> list[str]:
        """Every task's name, the first task's first ("label" when it has none)."""
        return [self.task or "label"] + [t["name"] for t in self.extra_tasks]

    def task_labels(self) -> list[list[str]]:
        """Every task's labels, in the order of ``task_names``."""
        return [self.labels] + [t["labels"] for t in self.extra_tasks]

    def task_temperatures(self) -> list[float]:
        return [self.temperature] + [t["temperature"] for t in self.extra_tasks]

    def set_task_temperature(self, index: int, temperature: float) -> None:
        if index == 0:
            self.temperature = temperature
        else:
            self.extra_tasks[index - 1]["temperature"] = temperature

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{"position_readout": False, **data})


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, L)
    cross_attention: tuple[torch.Tensor, ...]  # per layer (B, H, 1 + T, R): [summary; tokens] -> regions
    text_attention: tuple[torch.Tensor, ...]  # per layer (B, H, 1 + T, 1 + T)
    grid: tuple[int, int]  # (h, w) of the region grid, R = h * w
    extra_logits: tuple[torch.Tensor, ...] = ()  # (B, L_t) per further task (config.extra_tasks)

    def task_logits(self) -> tuple[torch.Tensor, ...]:
        """Every task's logits, the first task's (``logits``) first."""
        return (self.logits, *self.extra_logits)


class MultimodalClassifier(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        fusion: CrossModalFusion,
        head: nn.Module,
        extra_heads: nn.ModuleList | None = None,
    ):
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.fusion = fusion
        self.head = head
        if extra_heads:  # a one-task model has no such module: its state dict is as before
            self.extra_heads = extra_heads
        self.set_frozen(config.frozen)

    def heads(self) -> list[nn.Module]:
        """Every task's head, the first task's first."""
        return [self.head, *getattr(self, "extra_heads", ())]

    def set_frozen(self, parts: list[str]) -> None:
        """Freeze the named encoders (no gradients, BatchNorm/dropout kept in eval mode)."""
        self.config.frozen = list(parts)
        for part in PARTS:
            getattr(self, part).requires_grad_(part not in parts)
        self.train(self.training)

    def tune_image_blocks(self, top: int) -> list[nn.Module]:
        """Train the last ``top`` blocks of the frozen image encoder (their BatchNorm stays in
        eval mode with the rest of the encoder); returns them, the highest first."""
        if "image_encoder" not in self.config.frozen or not isinstance(self.image_encoder, EfficientNetLite0):
            raise ValueError("only the top blocks of a frozen EfficientNet-Lite0 can be tuned")
        self.config.image_tuned_blocks = max(self.config.image_tuned_blocks, top)
        modules = self.image_encoder.top_modules(top)
        for module in modules:
            module.requires_grad_(True)
        return modules

    def train(self, mode: bool = True) -> MultimodalClassifier:
        super().train(mode)
        for part in self.config.frozen:
            getattr(self, part).eval()
        return self

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.pool_regions(self.image_encoder(pixels))  # (B, C, h, w)

    def pool_regions(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The image encoder's map -> the fusion's regions (``config.region_pool``)."""
        pool = self.config.region_pool
        return F.avg_pool2d(feature_map, pool, ceil_mode=True) if pool > 1 else feature_map

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask)  # (B, T, E)

    def forward_fusion(
        self,
        feature_map: torch.Tensor,
        text_states: torch.Tensor,
        attention_mask: torch.Tensor,
        drop_image: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        pixels: torch.Tensor | None = None,
    ) -> ModelOutput:
        """feature_map (U, C, h, w), one per distinct image, and pixels (U, 3, S, S) the
        normalised images they came from; image_index (B,) says which one each row uses
        (default: one per row)."""
        summary, cross, text_self = self.fusion(
            feature_map, text_states, attention_mask, drop_image, drop_text, image_index, pixels
        )
        extra = tuple(head(summary) for head in self.heads()[1:])
        return ModelOutput(self.head(summary), cross, text_self, tuple(feature_map.shape[-2:]), extra)

    def forward(
        self,
        pixels: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        drop_image: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> ModelOutput:
        """pixels (B, 3, S, S) or None for text only; input_ids / attention_mask (B, T) or None
        for image only. drop_image / drop_text (B,) bool mask a modality per sample."""
        if pixels is None and input_ids is None:
            raise ValueError("the model needs an image, a text, or both")
        if pixels is None:
            b, device = input_ids.shape[0], input_ids.device
            g = self.config.grid_size
            feature_map = torch.zeros(b, self.image_encoder.out_channels, g, g, device=device)
            drop_image = torch.ones(b, dtype=torch.bool, device=device)
        else:
            feature_map = self.encode_image(pixels)
        if input_ids is None:
            b, device = pixels.shape[0], pixels.device
            input_ids = torch.zeros(b, 1, dtype=torch.long, device=device)
            attention_mask = torch.zeros(b, 1, dtype=torch.long, device=device)
        text_states = self.encode_text(input_ids, attention_mask)
        return self.forward_fusion(feature_map, text_states, attention_mask, drop_image, drop_text, pixels=pixels)

    def stored_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: everything but the frozen, package-referenced encoders."""
        return {k: v for k, v in self.state_dict().items() if self.config.stores(k)}


def build_model(config: ModelConfig, pretrained: bool = True) -> MultimodalClassifier:
    """Config -> parts -> classifier.

    ``pretrained=False`` skips loading package weights into encoders whose weights will come
    from a checkpoint anyway; referenced (frozen, not stored) encoders always load them.
    """
    referenced = config.referenced_parts()
    if config.image_encoder == "efficientnet_lite0":
        image_encoder = EfficientNetLite0(config.image_stride)
        if config.image_pretrained and (pretrained or "image_encoder" in referenced):
            image_encoder.load_pretrained()
    else:
        image_encoder = SmallCNN(tuple(config.cnn_channels))

    if config.text_encoder == "minilm":
        text_encoder = MiniLMEncoder(config.text_model, pretrained=pretrained or "text_encoder" in referenced)
    else:
        text_encoder = GRUEncoder(load_tokenizer(config.text_model).vocab_size, config.gru_dim)

    fusion = CrossModalFusion(
        image_encoder.out_channels,
        text_encoder.out_dim,
        config.fusion_dim,
        config.fusion_heads,
        config.fusion_layers,
        config.region_layers,
        config.dropout,
        patch_size=image_encoder.output_stride * config.region_pool if config.patch_embedding else 0,
        position_readout=config.position_readout,
    )
    extra_heads = nn.ModuleList([make_head(config, len(t["labels"])) for t in config.extra_tasks])
    return MultimodalClassifier(
        config, image_encoder, text_encoder, fusion, make_head(config, len(config.labels)), extra_heads
    )


def make_head(config: ModelConfig, n_labels: int) -> nn.Sequential:
    """A task's head: the fused summary (2 x fusion_dim) -> one logit per label."""
    return nn.Sequential(
        nn.Linear(2 * config.fusion_dim, config.fusion_dim),
        nn.GELU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.fusion_dim, n_labels),
    )
