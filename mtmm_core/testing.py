"""Check a registered component against its contract (``mtmm_core.contracts``), as a plugin author would.

In a test::

    from mtmm_core.testing import check_component

    def test_my_fusion():
        check_component("fusion", "film")          # raises ContractBreach listing every breach

From the shell, every component of a distribution: ``mtmm check-plugin mtmm-extra``.

Each component is built with its declared defaults (plus the parameters given) and the wiring
mtmm would pass, then run forward and backward on small random batches with absent modalities,
padded positions holding NaN, and missing labels. Components the checker cannot drive are
reported as skipped with the reason (an encoder without ``example_batch``, a loss without
``example``, a required parameter without a default), never as passing. A component may register
``example_params={...}``: the values the checker passes to its required parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from mtmm_core.components import check_arguments, get_component, list_components
from mtmm_core.contracts import CONTRACTS
from mtmm_core.errors import MtmmError, UsageError
from mtmm_core.registry import Component, normalize_distribution, normalize_kind
from mtmm_core.spec import instantiate
from mtmm_core.weighting import call_with_present, is_gradient_level, takes_present

#: What mtmm passes when it builds a component, here on small widths: defaults a component's own
#: parameters may override (``dim``), and wiring they may not.
MODALITY_DIMS = {"a": 8, "b": 12}
TASKS = ["t1", "t2", "t3"]
FEATURES = 16
DEFAULTS: dict[str, dict[str, Any]] = {"encoder": {"dim": FEATURES}, "fusion": {"dim": FEATURES},
                                       "architecture": {"dim": FEATURES}}
WIRING: dict[str, dict[str, Any]] = {
    "fusion": {"input_dims": MODALITY_DIMS},
    "architecture": {"in_dim": FEATURES, "tasks": TASKS[:2]},
    "head": {"in_dim": FEATURES, "modality_dims": MODALITY_DIMS},
    "weighting": {"tasks": TASKS},
}


@dataclass
class Report:
    """What the checks found for one component: breaches, and checks that could not run."""

    label: str
    breaches: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def check(self, name: str, condition: bool, problem: str) -> bool:
        (self.passed.append(name) if condition else self.breaches.append((name, problem)))
        return condition

    def run(self, name: str, action: Callable[[], Any]) -> Any:
        """``action()``; an exception from it is a breach of ``name`` (None is returned)."""
        try:
            return action()
        except Exception as error:  # the component's failure is the finding
            self.breaches.append((name, f"raised {type(error).__name__}: {error}"))
            return None

    @property
    def ok(self) -> bool:
        return not self.breaches

    def __str__(self) -> str:
        verdict = f"{len(self.breaches)} breach(es)" if self.breaches else "ok" if self.passed else "not checked"
        lines = [f"{self.label}: {verdict} "
                 f"({len(self.passed)} checks passed, {len(self.skipped)} skipped)"]
        lines += [f"  breach: {name}: {problem}" for name, problem in self.breaches]
        lines += [f"  skipped: {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


class ContractBreach(AssertionError):
    """A component broke its contract; the message lists every breach with the component's name."""


def check_component(kind: str, name: str, **params: Any) -> Report:
    """Check the registered component ``name`` of ``kind``; raise :class:`ContractBreach` on any breach.

    ``params`` are passed to its factory (needed for parameters without a default). Returns the
    :class:`Report` (its ``skipped`` lists what could not be checked).
    """
    report = find_breaches(kind, name, **params)
    if not report.ok:
        raise ContractBreach(str(report))
    return report


def find_breaches(kind: str, name: str, **params: Any) -> Report:
    """The :class:`Report` of every contract check on one registered component."""
    component = get_component(normalize_kind(kind), name)
    report = Report(f"{component.kind} {component.name!r} from {component.distribution} {component.version}".rstrip())
    if component.kind in ("loss", "metric"):
        CHECKS[component.kind](component, report)
        return report
    required = component.metadata.get("requires")  # an optional package (the pretrained encoders' timm)
    if required:
        from mtmm_core.pretrained import extra_available, install_hint

        if not extra_available(required):
            report.skipped.append(("build", f"needs the optional package {required} ({install_hint(required)})"))
            return report
    built = _build(component, params, report)
    if built is not None:
        report.check("protocol", isinstance(built, CONTRACTS[component.kind]),
                     f"does not have every attribute of mtmm_core.contracts.{CONTRACTS[component.kind].__name__}")
        if isinstance(built, torch.nn.Module):
            built.eval()  # dropout off: outputs are compared across calls
        CHECKS[component.kind](built, report)
    return report


def check_distribution(distribution: str) -> list[Report]:
    """Reports for every component registered by ``distribution`` (what ``mtmm check-plugin`` prints)."""
    wanted = normalize_distribution(distribution)
    components = [c for c in list_components() if normalize_distribution(c.distribution) == wanted]
    if not components:
        known = sorted({c.distribution for c in list_components()})
        raise UsageError(f"no component is registered by the distribution {distribution!r}; "
                         f"distributions with components: {', '.join(known)} (see `mtmm plugins`)")
    return [find_breaches(c.kind, c.qualified_name) for c in components]


def _build(component: Component, params: dict[str, Any], report: Report) -> Any:
    """The component built as ``build_model`` builds it; None (reported) when it cannot be."""
    defaults, wiring = DEFAULTS.get(component.kind, {}), WIRING.get(component.kind, {})
    params = {**component.metadata.get("example_params", {}), **params}
    try:
        check_arguments(component, params, path="", supplied=frozenset(wiring) | frozenset(defaults))
    except MtmmError as error:  # a required parameter without a value: the checker cannot build it
        report.skipped.append(("build", f"{error}; pass it: check_component({component.kind!r}, "
                                        f"{component.name!r}, <parameter>=...)"))
        return None
    return report.run("build with defaults", lambda: instantiate(
        component.kind, component.qualified_name, params, component.kind, defaults, **wiring))


def _finite(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and bool(torch.isfinite(x).all())


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _gradients_finite(module: torch.nn.Module, report: Report) -> None:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    report.check("backward: finite gradients", all(_finite(g) for g in grads), "a parameter's gradient is NaN or inf")
    if any(True for _ in module.parameters()):
        report.check("backward: reaches the parameters", any(bool(g.abs().sum() > 0) for g in grads),
                     "no parameter receives a gradient")


def _rows(x: Any, rows: slice) -> Any:
    """The samples ``rows`` of one modality's batch: a tensor, a dict of them, or a list."""
    if isinstance(x, dict):
        return {k: _rows(v, rows) for k, v in x.items()}
    return x[rows]


def _zeros(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _zeros(v) for k, v in x.items()}
    return torch.zeros_like(x) if isinstance(x, torch.Tensor) else None


def _encoder_output(report: Report, encoder: Any, x: Any, lengths: Any, check: str, batch: int) -> Any:
    out = report.run(check, lambda: encoder(x, lengths))
    if out is None:
        return None
    tokens, mask = out
    good = (isinstance(tokens, torch.Tensor) and tokens.dim() == 3 and tokens.shape[0] == batch
            and tokens.shape[2] == encoder.out_dim and isinstance(mask, torch.Tensor)
            and mask.dtype == torch.bool and mask.shape == tokens.shape[:2])
    shapes = f"tokens {tuple(getattr(tokens, 'shape', ()))}, mask {tuple(getattr(mask, 'shape', ()))} {getattr(mask, 'dtype', '')}"
    if not report.check(f"{check}: shapes", good, f"expected tokens [B={batch}, L, out_dim={encoder.out_dim}] and "
                                                 f"mask bool [B, L], got {shapes}"):
        return None
    report.check(f"{check}: finite tokens", _finite(tokens), "tokens hold NaN or inf")
    return out


def check_encoder(encoder: Any, report: Report) -> None:
    if not report.check("out_dim", isinstance(getattr(encoder, "out_dim", None), int), "no integer out_dim"):
        return
    if not callable(getattr(encoder, "example_batch", None)):
        report.skipped.append(("forward", "no example_batch(batch_size) -> (x, lengths) method, so the checker "
                                          "cannot make an input"))
        return
    x, lengths = encoder.example_batch(5)
    out = _encoder_output(report, encoder, x, lengths, "forward", 5)
    if out is None:
        return
    single = _encoder_output(report, encoder, _rows(x, slice(0, 1)), None if lengths is None else lengths[:1],
                             "one sample alone", 1)
    if single is not None:
        report.check("samples independent", _close(single[0][0][single[1][0]], out[0][0][out[1][0]]),
                     "a sample's tokens change with the other samples of the batch")
    if lengths is not None and isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 2:
        padded = x.clone()
        steps = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
        padded[steps] = float("nan")
        again = _encoder_output(report, encoder, padded, lengths, "NaN past the lengths", 5)
        if again is not None:
            report.check("padding ignored", _close(again[0][out[1]], out[0][out[1]]),
                         "frames past a sample's length change its tokens")
        empty = lengths.clone()
        empty[0] = 0
        _encoder_output(report, encoder, x, empty, "a sample of length 0", 5)
    zeros = _zeros(x)
    if zeros is not None:
        _encoder_output(report, encoder, zeros, lengths, "all-zero input (an absent sample)", 5)
    tokens, mask = out
    report.run("backward", lambda: torch.where(mask[..., None], tokens, 0.0).sum().backward())
    _gradients_finite(encoder, report)


def check_fusion(fusion: Any, report: Report) -> None:
    if not report.check("out_dim", isinstance(getattr(fusion, "out_dim", None), int), "no integer out_dim"):
        return
    batch, steps = 6, {"a": 5, "b": 7}
    tokens = {m: torch.randn(batch, steps[m], d, requires_grad=True) for m, d in MODALITY_DIMS.items()}
    present = {"a": torch.tensor([True, True, False, True, True, True]),
               "b": torch.tensor([True, True, True, False, True, True])}
    masks = {m: (torch.arange(steps[m])[None, :] < torch.randint(1, steps[m] + 1, (batch, 1))) & present[m][:, None]
             for m in MODALITY_DIMS}

    def output(check: str, tokens: dict, masks: dict, present: dict, rows: int = batch) -> Any:
        out = report.run(check, lambda: fusion(tokens, masks, present))
        if out is not None and report.check(f"{check}: shape", isinstance(out, torch.Tensor) and out.shape ==
                                            (rows, fusion.out_dim), f"expected [B={rows}, out_dim={fusion.out_dim}], "
                                            f"got {tuple(getattr(out, 'shape', ()))}"):
            report.check(f"{check}: finite", _finite(out), "the output holds NaN or inf")
            return out
        return None

    out = output("forward (sample 2 lacks a, sample 3 lacks b)", tokens, masks, present)
    if out is None:
        return
    poisoned = {m: torch.where(masks[m][..., None], tokens[m], float("nan")) for m in tokens}
    again = output("NaN in masked and absent tokens", poisoned, masks, present)
    if again is not None:
        report.check("masked tokens ignored", _close(again, out), "masked or absent tokens change the output")
    output("one modality only", {"b": tokens["b"]}, {"b": masks["b"]}, {"b": torch.ones(batch, dtype=torch.bool)})
    alone = output("one sample alone", {m: t[:1] for m, t in tokens.items()}, {m: k[:1] for m, k in masks.items()},
                   {m: p[:1] for m, p in present.items()}, rows=1)
    if alone is not None:
        report.check("samples independent", _close(alone[0], out[0]), "a sample's output changes with the batch")
    report.run("backward", lambda: out.sum().backward())
    report.check("backward: finite input gradients", all(_finite(t.grad) for t in tokens.values() if t.grad is not None),
                 "a token gradient is NaN or inf")
    _gradients_finite(fusion, report)


def check_architecture(architecture: Any, report: Report) -> None:
    if not report.check("out_dim", isinstance(getattr(architecture, "out_dim", None), int), "no integer out_dim"):
        return
    x = torch.randn(5, FEATURES)
    out = report.run("forward", lambda: architecture(x))
    if out is None:
        return
    shaped = isinstance(out, dict) and list(out) == TASKS[:2] and all(
        isinstance(v, torch.Tensor) and v.shape == (5, architecture.out_dim) for v in out.values())
    if not report.check("forward: one [B, out_dim] per task", shaped, f"expected {{task: [5, {architecture.out_dim}]}} "
                        f"for tasks {TASKS[:2]}, got {type(out).__name__}"):
        return
    report.check("forward: finite", all(_finite(v) for v in out.values()), "a task's features hold NaN or inf")
    alone = report.run("one sample alone", lambda: architecture(x[:1]))
    if alone is not None:
        report.check("samples independent", all(_close(alone[t][0], out[t][0]) for t in out),
                     "a sample's features change with the batch")
    total = sum(v.sum() for v in out.values())
    if callable(getattr(architecture, "regularization", None)):
        penalty = report.run("regularization", architecture.regularization)
        if report.check("regularization: a finite scalar", isinstance(penalty, torch.Tensor) and penalty.dim() == 0
                        and _finite(penalty), f"expected a finite tensor [], got {penalty!r}"):
            total = total + penalty
    report.run("backward", lambda: total.backward())
    _gradients_finite(architecture, report)


def check_head(head: Any, report: Report) -> None:
    from mtmm_core.losses import loss_info

    loss = report.run("loss_kind names a registered loss", lambda: loss_info(head.loss_kind))
    for metric in getattr(head, "metrics", ()):
        report.run(f"metric {metric!r} registered", lambda: get_component("metric", metric))
    batch = 6
    x = torch.randn(batch, FEATURES)
    present = {"a": torch.tensor([True, True, False, True, True, True]), "b": torch.ones(batch, dtype=torch.bool)}
    pooled = {m: torch.randn(batch, d) for m, d in MODALITY_DIMS.items()}
    if getattr(head, "uses_modalities", False):
        prediction = report.run("forward", lambda: head(x, pooled=pooled, present=present))
    else:
        prediction = report.run("forward", lambda: head(x))
    if prediction is None or not report.check("forward: [B, ...]", isinstance(prediction, torch.Tensor) and
                                              prediction.shape[:1] == (batch,), "expected a tensor with B rows"):
        return
    report.check("forward: finite", _finite(prediction), "the prediction holds NaN or inf")
    if loss is None:
        return
    example_target = loss.component.metadata.get("example_target")
    target = None
    if loss.needs_target:
        if not callable(example_target):
            report.skipped.append(("loss and metrics", f"{loss.label} has no example_target metadata, so the checker "
                                                       "cannot make a target for this head"))
            return
        target = example_target(prediction.detach())
    mask = torch.tensor([True, False, True, True, False, True])
    value = report.run("loss with missing labels", lambda: loss.component.factory(prediction, target, mask))
    if report.check("loss: a finite scalar", isinstance(value, torch.Tensor) and value.dim() == 0 and _finite(value),
                    f"{loss.label} returned {value!r} for this head's prediction"):
        report.run("backward", lambda: value.backward())
        _gradients_finite(head, report)
    for metric in getattr(head, "metrics", ()):
        measure = report.run(f"metric {metric!r}", lambda: float(get_component("metric", metric).factory(
            prediction.detach(), target)))
        report.check(f"metric {metric!r} gives a number", isinstance(measure, float), f"returned {measure!r}")


def check_weighting(weighting: Any, report: Report) -> None:
    losses = torch.tensor([0.5, 1.2, 2.0], requires_grad=True)
    initial = copy.deepcopy(weighting)
    total = report.run("forward", lambda: call_with_present(weighting.forward, losses, None))
    report.check("forward: a finite scalar", isinstance(total, torch.Tensor) and total.dim() == 0 and _finite(total),
                 f"expected the total as a tensor [], got {total!r}")
    weights = report.run("weights()", weighting.weights)
    report.check("weights(): [T]", isinstance(weights, torch.Tensor) and weights.shape == (len(TASKS),),
                 f"expected [T={len(TASKS)}], got {weights!r}")
    present = torch.tensor([True, False, True])
    if not takes_present(weighting.forward):
        report.skipped.append(("absent tasks", "forward takes no `present`: an absent task is passed as a loss of 0"))
    elif not is_gradient_level(weighting):
        fresh = torch.tensor([0.5, 1.2, 2.0], requires_grad=True)
        part = report.run("forward with an absent task", lambda: copy.deepcopy(initial)(fresh, present=present))
        if isinstance(part, torch.Tensor) and report.run("backward", lambda: part.backward()) is None:
            report.check("absent task gets weight 0", fresh.grad is None or float(fresh.grad[1]) == 0.0,
                         "the absent task's loss still has a gradient")
    if is_gradient_level(weighting):
        _check_combine(initial, report, present)
    clone = report.run("state_dict round trip", lambda: _reloaded(initial, weighting))
    if clone is not None:  # a resumed run must continue as the uninterrupted one would
        later = torch.tensor([0.7, 0.9, 1.5])
        torch.manual_seed(0)
        expected = call_with_present(weighting.forward, later, None)
        torch.manual_seed(0)
        got = call_with_present(clone.forward, later, None)
        report.check("state_dict round trip", _close(got.detach(), expected.detach()),
                     "a rebuilt weighting loaded from state_dict() gives another total on the next batch")
    for hook in ("after_step", "end_epoch"):
        if callable(getattr(weighting, hook, None)):
            report.run(hook, lambda: call_with_present(getattr(weighting, hook), losses.detach(), present))


def _reloaded(initial: Any, weighting: Any) -> Any:
    clone = copy.deepcopy(initial)
    clone.load_state_dict(weighting.state_dict())
    return clone


def _check_combine(initial: Any, report: Report, present: torch.Tensor) -> None:
    grads, losses = torch.randn(len(TASKS), 10, dtype=torch.float64), torch.tensor([0.5, 1.2, 2.0], dtype=torch.float64)
    combined = report.run("combine", lambda: copy.deepcopy(initial).combine(grads, losses))
    report.check("combine: [P], finite", isinstance(combined, torch.Tensor) and combined.shape == (10,)
                 and _finite(combined), f"expected a finite [P=10], got {combined!r}")
    results = []
    for fill in (float("nan"), 7.0):  # the absent task's gradient must not matter
        poisoned = grads.clone()
        poisoned[1] = fill
        torch.manual_seed(0)
        results.append(report.run("combine with an absent task", lambda: copy.deepcopy(initial).combine(
            poisoned, losses, present=present)))
    if all(isinstance(r, torch.Tensor) for r in results):
        report.check("absent task's gradient ignored", _finite(results[0]) and _close(results[0], results[1]),
                     "the absent task's gradient changes the combined gradient")


def check_dataset(dataset: Any, report: Report) -> None:
    from mtmm_core.contracts import Batch
    from mtmm_core.model import batch_size_of

    splits = getattr(dataset, "splits", {})
    report.check("splits", {"train", "validation", "test"} <= set(splits),
                 f"needs splits train, validation and test, got {sorted(splits)}")
    for name in sorted(set(splits) & {"train", "validation", "test"}):
        split = splits[name]
        size = len(split)
        if not report.check(f"{name}: not empty", size > 0, "has no sample"):
            continue
        rows = np.array([size - 1, 0, size // 2], dtype=np.int64)
        batch = report.run(f"{name}: batch(rows)", lambda: split.batch(rows))
        if batch is None or not report.check(f"{name}: a Batch", isinstance(batch, Batch),
                                             f"batch() returned {type(batch).__name__}, not mtmm_core.Batch"):
            continue
        report.check(f"{name}: modalities", set(batch.inputs) <= set(dataset.modalities),
                     f"inputs {sorted(batch.inputs)} are not all in modalities {sorted(dataset.modalities)}")
        report.check(f"{name}: tasks", set(batch.targets) <= set(dataset.tasks),
                     f"targets {sorted(batch.targets)} are not all in tasks {sorted(dataset.tasks)}")
        sizes = {m: report.run(f"{name}: batch size of {m}", lambda: batch_size_of(x)) for m, x in batch.inputs.items()}
        sizes.update({f"targets[{t}]": y.shape[0] for t, y in batch.targets.items()})
        report.check(f"{name}: 3 rows everywhere", set(sizes.values()) == {3}, f"asked for 3 rows, got {sizes}")
        flags = {**(batch.present or {}), **{f"task_masks[{t}]": m for t, m in (batch.task_masks or {}).items()}}
        report.check(f"{name}: bool [B] flags", all(f.dtype == torch.bool and f.shape == (3,) for f in flags.values()),
                     "present and task_masks entries must be bool [B]")
        report.check(f"{name}: int64 lengths", all(n.dtype == torch.int64 and n.shape == (3,)
                                                   for n in batch.lengths.values()), "lengths must be int64 [B]")


def check_loss(component: Component, report: Report) -> None:
    example = component.metadata.get("example")
    if not callable(example):
        report.skipped.append(("forward", "no example(batch_size) -> (prediction, target) metadata, so the "
                                          "checker cannot make an input"))
        return
    loss, needs_target = component.factory, component.metadata.get("needs_target", True)
    prediction, target = example(7)
    prediction = prediction.float().requires_grad_()
    mask = torch.tensor([True, True, False, True, False, True, True])
    value = report.run("forward", lambda: loss(prediction, target, mask))
    if not report.check("forward: a finite scalar", isinstance(value, torch.Tensor) and value.dim() == 0
                        and _finite(value), f"expected a finite tensor [], got {value!r}"):
        return
    poisoned = prediction.detach().clone()
    poisoned[~mask] = float("nan")
    if not needs_target and poisoned.dim() == 2 and poisoned.shape[1] == len(mask):
        poisoned[:, ~mask] = float("nan")
    other = None if target is None else target.clone()
    if other is not None:
        other[~mask] = float("nan") if other.is_floating_point() else -1
    again = report.run("NaN in unlabelled samples", lambda: loss(poisoned, other, mask))
    if isinstance(again, torch.Tensor):
        report.check("unlabelled samples ignored", _finite(again) and _close(again.detach(), value.detach()),
                     "the prediction or target of a sample outside the mask changes the loss")
    none = report.run("no labelled sample", lambda: loss(prediction, target, torch.zeros(7, dtype=torch.bool)))
    report.check("no labelled sample: 0 with a graph", isinstance(none, torch.Tensor) and float(none.detach()) == 0.0
                 and none.requires_grad, f"expected 0 connected to the prediction, got {none!r}")
    if needs_target:
        singles = [loss(prediction, target, torch.arange(7) == i).detach() for i in range(7) if mask[i]]
        report.check("mean over the labelled samples", _close(torch.stack(singles).mean(), value.detach()),
                     "is not the mean of the per-sample losses over the mask")
    report.run("backward", lambda: value.backward())
    grad = prediction.grad
    report.check("backward: finite, 0 outside the mask", grad is not None and _finite(grad)
                 and bool((grad[~mask] == 0).all()), "the gradient is NaN, inf or non-zero on an unlabelled sample")


def check_metric(component: Component, report: Report) -> None:
    report.check("callable", callable(component.factory), "the registered metric is not callable")
    report.check("higher_is_better", isinstance(component.metadata.get("higher_is_better"), bool),
                 "register it with higher_is_better=True or False (early stopping follows it)")


CHECKS: dict[str, Callable[[Any, Report], None]] = {
    "encoder": check_encoder, "fusion": check_fusion, "architecture": check_architecture, "head": check_head,
    "weighting": check_weighting, "dataset": check_dataset, "loss": check_loss, "metric": check_metric,
}
