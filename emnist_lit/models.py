"""Backbones for 1-channel 28x28 characters: torchvision ResNets adapted at the stem, and LeNet."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision import models

BackboneName = Literal["resnet18", "resnet34", "resnet50", "lenet", "cnn"]
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


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CNN(nn.Module):
    """A VGG-style net sized for 28x28 characters: three stages of two 3x3 conv-BN-ReLU (`width`, 2x, 4x channels)
    at 28, 14 and 7 pixels, then global average pooling; several times cheaper than a ResNet, so it trains on a CPU."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(1, w),
            *_conv_bn_relu(w, w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w),
            *_conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w),
            *_conv_bn_relu(4 * w, 4 * w),
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, num_classes)
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
    width: int = 32,
) -> nn.Module:
    """The network named in the config, with `num_classes` outputs and a dropout head; `width` sizes `cnn` only."""
    if name == "lenet":
        return LeNet(num_classes, dropout=dropout)
    if name == "cnn":
        return CNN(num_classes, width=width, dropout=dropout)
    if name in ("resnet18", "resnet34", "resnet50"):
        return resnet(name, num_classes, stem=stem, stem_activation=stem_activation, dropout=dropout)
    raise ValueError(f"unknown backbone {name!r}; choose one of resnet18, resnet34, resnet50, lenet, cnn")
