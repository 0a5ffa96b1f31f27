"""Networks for 64×64 grayscale faces, and the registry that names them for ``--model``."""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
from torch import nn

from .fer_format import CROP_SIZE, NUM_EMOTIONS
from .settings import DEFAULT_MODEL, MODEL_NAMES

INPUT_SIZE = CROP_SIZE  # every model takes (N, 1, INPUT_SIZE, INPUT_SIZE) preprocessed crops


class VGG13(nn.Module):
    """The FER+ paper's VGG13: four conv blocks with max-pooling and dropout, then three dense layers.

    Blocks hold 2, 2, 3 and 3 3×3 convolutions (padding 1, ReLU); each ends with 2×2 max-pooling
    and dropout 0.25. Two dense layers of ``hidden`` units (ReLU, dropout 0.5) and a linear layer
    giving ``num_classes`` raw scores follow. ``widths`` sets each block's channel count, so that
    narrower variants share the architecture; ``batch_norm`` adds batch normalisation after every
    convolution (not in the paper: it lets small variants leave the constant-prediction plateau
    within a few epochs of a small data set).
    """

    BLOCK_DEPTHS = (2, 2, 3, 3)

    def __init__(
        self,
        num_classes: int = NUM_EMOTIONS,
        widths: Sequence[int] = (64, 128, 256, 256),
        hidden: int = 1024,
        conv_dropout: float = 0.25,
        dense_dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width, depth in zip(widths, self.BLOCK_DEPTHS):
            for _ in range(depth):
                layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers += [nn.MaxPool2d(2), nn.Dropout(conv_dropout)]
        self.features = nn.Sequential(*layers)
        side = INPUT_SIZE // 2 ** len(self.BLOCK_DEPTHS)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dense_dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dense_dropout),
            nn.Linear(hidden, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights (fans include the kernel area) and zero biases, as the paper's trainer."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map preprocessed crops ``(N, 1, 64, 64)`` to raw scores ``(N, num_classes)``."""
        return self.classifier(self.features(x))


#: Model name → constructor. ``vgg13`` is the paper's network and ``vgg13_bn`` the same with
#: batch normalisation; ``vgg13_small`` is a quarter as wide. ``vgg13_tiny`` (an eighth as wide,
#: batch-normalised, lighter dropout) learns within minutes on a CPU: for trials and tests.
MODELS: Dict[str, Callable[[], nn.Module]] = {
    "vgg13": lambda: VGG13(),
    "vgg13_bn": lambda: VGG13(batch_norm=True),
    "vgg13_small": lambda: VGG13(widths=(16, 32, 64, 64), hidden=256),
    "vgg13_tiny": lambda: VGG13(
        widths=(8, 16, 32, 32), hidden=128, conv_dropout=0.1, dense_dropout=0.25, batch_norm=True
    ),
}
assert tuple(MODELS) == MODEL_NAMES, "settings.MODEL_NAMES must list the registry"


def create_model(name: str = DEFAULT_MODEL) -> nn.Module:
    """Build a freshly initialised model by registry name; ``ValueError`` lists the names on a miss."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]()
