"""Backbones for 1-channel 28x28 characters: torchvision ResNets adapted at the stem, and LeNet."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision import models

BackboneName = Literal["resnet18", "resnet34", "resnet50", "lenet"]
StemName = Literal["imagenet", "small"]


class LeNet(nn.Module):
    """The classic two-convolution LeNet (20 and 50 filters of 5x5, 'same' padding, two max-pools, two dense
    layers) of the Balanced-47 reference."""

    def __init__(self, num_classes: int, hidden: int = 500, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet(
    name: Literal["resnet18", "resnet34", "resnet50"],
    num_classes: int,
    stem: StemName = "imagenet",
    stem_activation: Literal["relu", "prelu"] = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """A torchvision ResNet for one grey channel: `imagenet` keeps the 7x7 stride-2 stem and max-pool (as the VIN
    reference did), `small` uses a 3x3 stride-1 stem without max-pool, which keeps 28x28 detail."""
    net = getattr(models, name)(num_classes=num_classes)
    if stem == "imagenet":
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        net.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    if stem_activation == "prelu":
        net.relu = nn.PReLU(64)  # torchvision's ResNet uses self.relu in the stem only; blocks have their own
    net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(net.fc.in_features, num_classes))
    return net


def build_backbone(
    name: BackboneName,
    num_classes: int,
    stem: StemName = "imagenet",
    stem_activation: Literal["relu", "prelu"] = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """The network named in the config, with `num_classes` outputs and a dropout head."""
    if name == "lenet":
        return LeNet(num_classes, dropout=dropout)
    if name in ("resnet18", "resnet34", "resnet50"):
        return resnet(name, num_classes, stem=stem, stem_activation=stem_activation, dropout=dropout)
    raise ValueError(f"unknown backbone {name!r}; choose one of resnet18, resnet34, resnet50, lenet")
