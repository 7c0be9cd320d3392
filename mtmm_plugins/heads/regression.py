"""Regression head."""

import torch
from einops import rearrange
from torch import nn

from mtmm_core.components import get_component
from mtmm_core.errors import AmbiguousComponentError, UnknownComponentError
from mtmm_core.registry import is_builtin

from mtmm_plugins.checks import check_number
from mtmm_plugins.heads.mlp import check_features, check_hidden_and_dropout, check_positive, prediction_mlp

REGRESSION_LOSSES = ("mse", "l1", "huber")  # the built-in losses a regression head can take


class RegressionHead(nn.Module):
    """Regression: features ``[B, in_dim]`` to values ``[B]`` or ``[B, out_features]``.

    With ``out_features = 1`` the prediction is ``[B]``, otherwise ``[B, K]``. ``loss``
    (``mse``, ``l1``, ``huber``, or any registered loss that takes a target: ``mtmm list loss``)
    becomes the head's ``loss_kind``.

    Predictions are in the target's units: ``target_mean + target_std * mlp(x)``. The
    model scores them on the scale ``target_std`` (``target_scale``), so a target in
    the range 0..18 weighs like a classification loss instead of drowning it. The
    trainer fills both from the training split unless the spec sets them.
    """

    metrics = ("mae", "rmse", "r2")

    def __init__(
        self,
        *,
        in_dim: int,
        out_features: int = 1,
        hidden: int = 0,
        dropout: float = 0.0,
        loss: str = "mse",
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ):
        super().__init__()
        check_positive("in_dim", in_dim)
        check_positive("out_features", out_features)
        check_hidden_and_dropout(hidden, dropout)
        check_regression_loss(loss)
        self.in_dim = in_dim
        self.out_features = out_features
        self.loss_kind = loss
        check_number("target_mean", target_mean)
        check_number("target_std", target_std, 0.0, low_open=True)
        self.mlp = prediction_mlp(in_dim, out_features, hidden, dropout)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_scale", torch.tensor(float(target_std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.in_dim, "regression head")
        values = self.target_mean + self.target_scale * self.mlp(x)
        if self.out_features == 1:
            return rearrange(values, "b 1 -> b")
        return values


def check_regression_loss(name: str) -> None:
    """Raise ValueError unless ``name`` is a registered loss that compares predictions with targets."""
    if not isinstance(name, str):
        raise ValueError(f"loss must be the name of a registered loss (e.g. mse, l1, huber), got {name!r}")
    try:
        component = get_component("loss", name)
    except (UnknownComponentError, AmbiguousComponentError) as error:
        raise ValueError(f"regression loss {name!r}: {error}") from error
    builtin_ok = not is_builtin(component) or component.name in REGRESSION_LOSSES
    if not builtin_ok or not component.metadata.get("needs_target", True):
        raise ValueError(f"regression loss {name!r} does not compare values with targets; valid losses: "
                         f"{', '.join(REGRESSION_LOSSES)}, or a plugin's loss that takes a target")
