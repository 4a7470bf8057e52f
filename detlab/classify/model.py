"""The classifier: a backbone's last feature map, global average pooling, and a new head.

Two classes use a single logit and binary cross-entropy; more classes use one logit each and cross-entropy.
"""

import torch
from torch import nn
from torch.nn import functional as F

from detlab.backbones import Backbone

#: The heads :class:`Classifier` builds (``head``).
HEADS = ("linear", "mlp")


class Classifier(nn.Module):
    """Backbone + new head.

    Args:
        backbone: its last level (``backbone.levels[-1]``) is pooled.
        num_classes: >= 2.
        head: ``"linear"``, or ``"mlp"``: the seeds' ``Dense(hidden, relu)`` before the output layer.
        dropout: dropout probability before the output layer.
    """

    def __init__(self, backbone: Backbone, num_classes: int, head: str = "linear", dropout: float = 0.0,
                 hidden: int = 128):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; valid choices: {', '.join(HEADS)}")
        channels = backbone.out_channels[backbone.levels[-1]]
        layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if head == "mlp":
            layers += [nn.Linear(channels, hidden), nn.ReLU(inplace=True)]
            channels = hidden
        layers += [nn.Dropout(dropout), nn.Linear(channels, 1 if num_classes == 2 else num_classes)]
        self.head = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (Tensor[B, 3, H, W]) -> logits (Tensor[B, num_classes], or Tensor[B, 1] for two classes)."""
        return self.head(self.backbone(images)[self.backbone.levels[-1]])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits from ``forward``, labels (Tensor[B] int64 in 0..num_classes-1) -> mean loss (Tensor[])."""
        if self.num_classes == 2:
            return F.binary_cross_entropy_with_logits(logits[:, 0].float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """logits from ``forward`` -> labels (Tensor[B] int64)."""
        if self.num_classes == 2:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)
