"""A network that reads a whole line of handwriting: the character CNN slid along the line, a recurrent layer for
context, and a class-plus-blank score every few pixels, for CTC."""

from __future__ import annotations

import torch
from torch import nn

from emnist_lit.line_ink import LINE_HEIGHT
from emnist_lit.models import CNN

FRAME_STRIDE = 4
"""Input columns per output frame: the CNN's two max-pools."""


class LineCNN(nn.Module):
    """(B, 1, 28, W) line images -> (B, W // 4, num_classes + 1) scores, index 0 CTC's blank.

    The convolutions are `models.CNN`'s, so a trained character model's weights can start them: they already know
    strokes and characters, and only the folding of rows, the LSTM and the output layer start from nothing. A
    convolution folds the 7 rows left after pooling into one column of features every 4 pixels; a bidirectional
    LSTM gives every column the whole line (how many characters came before, where a wide one ends)."""

    def __init__(self, num_classes: int, width: int = 32, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = CNN(num_classes, width).features
        channels = 4 * width
        rows = LINE_HEIGHT // FRAME_STRIDE
        self.fold = nn.Sequential(
            nn.Conv2d(channels, 2 * channels, (rows, 1), bias=False),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(inplace=True),
        )
        self.context = nn.LSTM(2 * channels, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden, num_classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = self.fold(self.features(x)).squeeze(2).transpose(1, 2)
        context, _ = self.context(columns)
        return self.classifier(self.dropout(context))
