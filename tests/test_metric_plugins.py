"""Metrics are an open set: registered through register_metrics, named by heads, checked at build time."""

from __future__ import annotations

import pytest
import torch

import mtmm_core
from mtmm_core import SpecError, build_model, plugins
from mtmm_core.evaluation import is_better
from mtmm_core.metrics import task_metrics
from mtmm_plugins.heads.regression import RegressionHead


def max_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """The largest absolute error."""
    return (prediction.double() - target.double()).abs().max().item()


class WorstCaseHead(RegressionHead):
    metrics = ("mae", "max_error")


class TypoHead(RegressionHead):
    metrics = ("mea",)


class Plugin:
    @mtmm_core.hookimpl
    def register_metrics(self, register):
        register("max_error", max_error, higher_is_better=False)

    @mtmm_core.hookimpl
    def register_heads(self, register):
        register("worst_case", WorstCaseHead)
        register("typo", TypoHead)


@pytest.fixture
def metric_plugin():
    name = plugins.register_plugin(Plugin(), name="test-metric-plugin")
    yield
    plugins.unregister_plugin(name)


def spec(head: str) -> dict:
    return {"dim": 8, "encoders": {"x": {"name": "tabular", "num_numeric": 3}}, "fusion": "concat",
            "tasks": {"y": {"head": head}}}


def test_the_builtin_metrics_are_registered_components_with_their_direction():
    names = {c.name: c for c in mtmm_core.list_components("metric")}
    assert set(names) == {"accuracy", "macro_f1", "auroc", "mae", "rmse", "r2", "retrieval_accuracy"}
    assert {c.distribution for c in names.values()} == {"mtmm"}
    assert [n for n, c in sorted(names.items()) if not c.metadata["higher_is_better"]] == ["mae", "rmse"]


def test_builtin_metrics_match_hand_computed_values():
    prediction, target = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 2.0])
    values = task_metrics(("mae", "rmse", "r2"), prediction, target)
    assert values["mae"] == pytest.approx(1.0)
    assert values["rmse"] == pytest.approx((5 / 3) ** 0.5)
    assert values["r2"] == pytest.approx(1 - 5 / 2)  # SS_res 5, SS_tot 2


def test_a_plugin_metric_is_computed_for_the_head_that_names_it_and_steers_monitoring(metric_plugin):
    model = build_model(spec("worst_case"))
    assert model.heads["y"].metrics == ("mae", "max_error")
    prediction, target = torch.tensor([0.0, 1.0, 5.0]), torch.tensor([0.5, 1.0, 1.0])
    assert task_metrics(model.heads["y"].metrics, prediction, target) == {
        "mae": pytest.approx(1.5), "max_error": pytest.approx(4.0)}
    assert is_better("y.max_error", 1.0, 2.0) and not is_better("y.max_error", 3.0, 2.0)  # lower is better


def test_an_unknown_metric_is_a_build_time_error_with_the_close_names(metric_plugin):
    with pytest.raises(SpecError, match=r"tasks.y.head: head 'typo' lists the metric 'mea': unknown metric "
                                        r"'mea'.*'mae'") as error:
        build_model(spec("typo"))
    assert isinstance(error.value.__cause__, KeyError)


def test_a_metric_not_in_the_registry_cannot_be_computed_silently():
    with pytest.raises(KeyError, match="max_error"):
        task_metrics(("max_error",), torch.zeros(2), torch.zeros(2))
