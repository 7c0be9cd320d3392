"""Binary and multilabel classification head."""

import torch
from einops import rearrange
from torch import nn

from mtmm_plugins.heads.mlp import check_features, check_hidden_and_dropout, check_positive, prediction_mlp


class BinaryHead(nn.Module):
    """Binary or multilabel classification: features ``[B, in_dim]`` to logits ``[B]`` or ``[B, num_labels]``.

    With ``num_labels = 1`` the logits are ``[B]`` (one yes/no decision per sample);
    with ``num_labels = K > 1`` they are ``[B, K]`` (K independent labels). Trained
    with binary cross-entropy on logits against float targets of the same shape.
    """

    loss_kind = "bce"
    metrics = ("accuracy", "auroc")

    def __init__(self, *, in_dim: int, num_labels: int = 1, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        check_positive("in_dim", in_dim)
        check_positive("num_labels", num_labels)
        check_hidden_and_dropout(hidden, dropout)
        self.in_dim = in_dim
        self.num_labels = num_labels
        self.mlp = prediction_mlp(in_dim, num_labels, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.in_dim, "binary head")
        logits = self.mlp(x)
        if self.num_labels == 1:
            return rearrange(logits, "b 1 -> b")
        return logits
