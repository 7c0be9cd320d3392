"""mtmm_core.testing.check_component and `mtmm check-plugin`: every built-in passes, and each kind of
contract breach in a deliberately broken component is found and named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mtmm_core
from mtmm_core import Batch, EncoderOutput, plugins
from mtmm_core.cli import main
from mtmm_core.errors import UsageError
from mtmm_core.pretrained import extra_available
from mtmm_core.testing import ContractBreach, check_component, check_distribution, find_breaches


@pytest.mark.parametrize("component", mtmm_core.list_components(), ids=lambda c: f"{c.kind}-{c.name}")
def test_every_builtin_component_passes_every_check_it_can_run(component):
    report = check_component(component.kind, component.name)
    required = component.metadata.get("requires")  # the pretrained encoders' optional extra (timm, transformers)
    if required and not extra_available(required):
        assert report.skipped and not report.passed, str(report)  # reported as not checked, not as a breach
        pytest.skip(f"{component.name} needs the optional package {required}")
    assert report.passed and not report.skipped, str(report)


class MultiplyingEncoder(nn.Module):
    """Multiplies the frames by the mask: 0 * NaN is NaN."""

    def __init__(self, *, dim: int = 16):
        super().__init__()
        self.out_dim = dim
        self.linear = nn.Linear(3, dim)

    def example_batch(self, batch_size):
        return torch.randn(batch_size, 5, 3), torch.randint(1, 6, (batch_size,))

    def forward(self, x, lengths=None):
        mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        return EncoderOutput(self.linear(x * mask[..., None]), mask)


class InputlessEncoder(MultiplyingEncoder):
    example_batch = None


class UnmaskedMeanFusion(nn.Module):
    """Averages every token, masked or not, and mixes the batch."""

    def __init__(self, *, input_dims, dim: int = 16):
        super().__init__()
        self.out_dim = dim
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in input_dims.items()})

    def forward(self, tokens, masks, present):
        pooled = sum(self.project[m](t.mean(dim=1)) for m, t in tokens.items())
        return pooled - pooled.mean(dim=0)


class WrongKeysArchitecture(nn.Module):
    def __init__(self, *, in_dim, tasks):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x):
        return {"only": x}


class UnregisteredLossHead(nn.Module):
    loss_kind = "cross_entropyy"
    metrics = ("accuracy",)

    def __init__(self, *, in_dim):
        super().__init__()
        self.linear = nn.Linear(in_dim, 3)

    def forward(self, x):
        return self.linear(x)


class PresentIgnoringWeighting(nn.Module):
    def __init__(self, *, tasks):
        super().__init__()
        self.tasks = tasks
        self.steps = 0  # not a buffer: lost on resume

    def forward(self, losses, present=None):
        self.steps += 1
        return losses.sum() * self.steps

    def weights(self):
        return torch.full((len(self.tasks),), float(self.steps))


def summed_loss(prediction, target, mask):
    """Sums over the labelled samples instead of averaging, and gives a bare 0 when none is labelled."""
    if not mask.any():
        return torch.tensor(0.0)
    return torch.where(mask[:, None], prediction - target, 0.0).pow(2).sum()


def unlabelled_loss(prediction, target, mask):
    """Averages over every sample, labelled or not."""
    return (prediction - target).pow(2).mean() + 0 * mask.sum()


def no_direction(prediction, target):
    return 0.0


class WrongSizeSplit:
    def __len__(self):
        return 10

    def batch(self, rows):
        return Batch(inputs={"x": torch.zeros(len(rows) + 1, 2)}, lengths={}, targets={"y": torch.zeros(len(rows))})


class WrongSizeDataset:
    modalities = {"x": {"kind": "tabular", "shape": [2]}}
    tasks = {"y": {"kind": "regression"}}

    def __init__(self):
        self.splits = {"train": WrongSizeSplit(), "validation": WrongSizeSplit()}


class Broken:
    @mtmm_core.hookimpl
    def register_encoders(self, register):
        register("multiplying", MultiplyingEncoder)
        register("inputless", InputlessEncoder)

    @mtmm_core.hookimpl
    def register_fusions(self, register):
        register("unmasked_mean", UnmaskedMeanFusion)

    @mtmm_core.hookimpl
    def register_architectures(self, register):
        register("wrong_keys", WrongKeysArchitecture)

    @mtmm_core.hookimpl
    def register_heads(self, register):
        register("unregistered_loss", UnregisteredLossHead)

    @mtmm_core.hookimpl
    def register_weightings(self, register):
        register("present_ignoring", PresentIgnoringWeighting)

    @mtmm_core.hookimpl
    def register_losses(self, register):
        example = {"example": lambda b: (torch.randn(b, 2), torch.randn(b, 2))}
        register("summed", summed_loss, **example)
        register("unlabelled", unlabelled_loss, **example)
        register("exampleless", unlabelled_loss)

    @mtmm_core.hookimpl
    def register_metrics(self, register):
        register("no_direction", no_direction)

    @mtmm_core.hookimpl
    def register_datasets(self, register):
        register("wrong_size", WrongSizeDataset)


@pytest.fixture
def broken():
    name = plugins.register_plugin(Broken(), name="broken-plugin")
    yield
    plugins.unregister_plugin(name)


def breaches(kind: str, name: str) -> dict[str, str]:
    return dict(find_breaches(kind, name).breaches)


def test_an_encoder_that_multiplies_by_the_mask_lets_nan_through(broken):
    found = breaches("encoder", "multiplying")
    assert "NaN past the lengths: finite tokens" in found


def test_an_encoder_without_example_batch_is_skipped_not_passed(broken):
    report = find_breaches("encoder", "inputless")
    assert report.ok and [name for name, _ in report.skipped] == ["forward"]
    assert "not checked" in str(report) or report.passed  # never reported as a plain pass of forward


def test_a_fusion_reading_masked_tokens_and_mixing_samples(broken):
    found = breaches("fusion", "unmasked_mean")
    assert {"NaN in masked and absent tokens: finite", "samples independent"} <= set(found), found


def test_an_architecture_with_the_wrong_tasks(broken):
    assert "forward: one [B, out_dim] per task" in breaches("architecture", "wrong_keys")


def test_a_head_naming_an_unregistered_loss_gets_the_close_name(broken):
    found = breaches("head", "unregistered_loss")
    assert "cross_entropy" in found["loss_kind names a registered loss"]


def test_a_weighting_that_ignores_absent_tasks_and_keeps_state_outside_state_dict(broken):
    found = breaches("weighting", "present_ignoring")
    assert {"absent task gets weight 0", "state_dict round trip"} <= set(found), found


def test_losses_that_sum_read_unlabelled_samples_or_lose_the_graph(broken):
    summed = breaches("loss", "summed")
    assert set(summed) == {"mean over the labelled samples", "no labelled sample: 0 with a graph"}, summed
    assert "unlabelled samples ignored" in breaches("loss", "unlabelled")
    assert [name for name, _ in find_breaches("loss", "exampleless").skipped] == ["forward"]


def test_a_metric_without_direction(broken):
    assert "higher_is_better" in breaches("metric", "no_direction")


def test_a_dataset_with_a_missing_split_and_wrong_batch_sizes(broken):
    found = breaches("dataset", "wrong_size")
    assert "splits" in found and "train: 3 rows everywhere" in found


def test_check_component_raises_naming_the_component_and_its_distribution(broken):
    with pytest.raises(ContractBreach, match=r"fusion 'unmasked_mean' from <in-process>: \d breach"):
        check_component("fusion", "unmasked_mean")


def test_check_distribution_and_the_command(broken, capsys):
    reports = check_distribution("<in-process>")
    assert len(reports) == 11 and sum(not r.ok for r in reports) == 9
    assert main(["check-plugin", "<in-process>"]) == 1
    out = capsys.readouterr().out
    assert "breach: NaN past the lengths: finite tokens" in out and "encoder 'multiplying' from <in-process>" in out
    assert main(["check-plugin", "<in-process>", "--component", "loss:summed"]) == 1
    assert main(["check-plugin", "mtmm", "--component", "fusion:gated"]) == 0
    with pytest.raises(UsageError, match="no component is registered by the distribution 'nope'"):
        check_distribution("nope")
    assert main(["check-plugin", "nope"]) == 2


def test_example_params_fill_required_parameters_and_given_ones_win():
    component = mtmm_core.get_component("head", "classification")
    assert component.metadata["example_params"] == {"num_classes": 5}
    report = check_component("head", "classification", num_classes=2)
    assert report.ok and report.passed


def test_a_required_parameter_with_no_example_is_reported_as_skipped():
    class NeedsWidth(nn.Module):
        def __init__(self, *, in_dim, width: int):
            super().__init__()

    class Plugin:
        @mtmm_core.hookimpl
        def register_heads(self, register):
            register("needs_width", NeedsWidth)

    name = plugins.register_plugin(Plugin(), name="needs-width")
    try:
        report = find_breaches("head", "needs_width")
        assert report.ok and not report.passed
        assert "width" in report.skipped[0][1] and "check_component('head', 'needs_width'" in report.skipped[0][1]
        assert "not checked" in str(report)
    finally:
        plugins.unregister_plugin(name)


def test_dataset_rows_are_int64_numpy():
    seen = []

    class Split:
        def __len__(self):
            return 4

        def batch(self, rows):
            seen.append(rows)
            return Batch(inputs={"x": torch.zeros(len(rows), 1)}, lengths={}, targets={})

    class Data:
        modalities = {"x": {"kind": "tabular", "shape": [1]}}
        tasks = {}

        def __init__(self):
            self.splits = {"train": Split(), "validation": Split(), "test": Split()}

    class Plugin:
        @mtmm_core.hookimpl
        def register_datasets(self, register):
            register("tiny", Data)

    name = plugins.register_plugin(Plugin(), name="tiny-data")
    try:
        assert check_component("dataset", "tiny").ok
    finally:
        plugins.unregister_plugin(name)
    assert all(isinstance(r, np.ndarray) and r.dtype == np.int64 for r in seen)
