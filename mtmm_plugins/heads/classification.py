"""Single-label classification head."""

import torch
from torch import nn

from mtmm_plugins.checks import check_int
from mtmm_plugins.heads.mlp import check_features, check_hidden_and_dropout, check_positive, prediction_mlp


class ClassificationHead(nn.Module):
    """Single-label classification: features ``[B, in_dim]`` to class logits ``[B, num_classes]``.

    Trained with cross-entropy against long targets ``[B]``. ``hidden = 0`` gives a
    linear head; ``hidden > 0`` adds one GELU hidden layer of that width.
    """

    loss_kind = "cross_entropy"
    metrics = ("accuracy", "macro_f1")

    def __init__(self, *, in_dim: int, num_classes: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        check_positive("in_dim", in_dim)
        check_int("num_classes", num_classes, minimum=2)
        check_hidden_and_dropout(hidden, dropout)
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.mlp = prediction_mlp(in_dim, num_classes, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.in_dim, "classification head")
        return self.mlp(x)
