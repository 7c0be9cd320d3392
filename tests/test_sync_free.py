"""The trainer's step makes no host synchronisation, for every shipped config.

On a GPU, reading a value the device computed (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``,
``torch.equal``, ``nonzero``, a boolean-mask index, a blocking ``torch.tensor(..., device=...)``)
stalls the host until every queued kernel has run. There is no GPU here, so :class:`SyncCounter`
records the calls that would do so while the trainer's step runs on the CPU: aten operations whose
result depends on tensor values (seen by a dispatch mode, wherever they are called from) and the
Python-level copies to the host (which do not dispatch on the CPU). The step is
``Trainer._step`` (forward, losses, backward, optimiser, the weighting's after-step); the batch
loader's host checks and the logging interval's one read lie outside it.

This holds for ``train.precision`` fp32 and bf16, with gradient accumulation, and under both
``train.strategy`` engines (DDP and FSDP2, checked here in a one-process gloo group). The exception
is fp16, which is CUDA-only and not run here: its ``GradScaler.step`` reads the found-inf flag
back from the device once per step, by design (docs/distributed.md).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mtmm_core.trainer as trainer_module
from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.config import CONFIG_DIR, load_config
from mtmm_core.model import value_checks
from mtmm_core.trainer import NonFiniteLossError, Trainer
from small_data import SMALL_MODEL, FewRows, small_config

ROOT = str(Path(__file__).resolve().parents[1])
TORCH = str(Path(torch.__file__).resolve().parent)
SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))

#: aten operations that read tensor values on the host: on a GPU each waits for the device.
VALUE_OPS = {
    torch.ops.aten._local_scalar_dense.default,  # item(), bool(), int(), float(), a 0-d tensor used as an index
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.nonzero_static.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten._unique2.default,
    torch.ops.aten.unique_consecutive.default,
    torch.ops.aten.unique_dim.default,
    torch.ops.aten.bincount.default,
    torch.ops.aten.repeat_interleave.Tensor,
}
#: Python-level copies to the host (on the CPU they dispatch nothing); counted unless torch itself calls them
#: (AdamW, for one, creates its step count as a host tensor on purpose).
HOST_COPIES = ("tolist", "numpy", "cpu", "__array__")


def _bool_index(func, args) -> bool:
    """An index or index_put with a bool mask: the kernel counts the mask's True entries first."""
    if func not in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
                    torch.ops.aten._index_put_impl_.default):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] or ())


def _caller() -> str:
    """The innermost frame in this repository outside this file: where the sync was asked for."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename.startswith(ROOT) and not frame.filename.endswith("test_sync_free.py"):
            return f"{frame.filename[len(ROOT) + 1:]}:{frame.lineno} {frame.name}: {frame.line}"
    return "(outside the repository)"


class SyncCounter(TorchDispatchMode):
    """Records, while active, every call that would make the host wait for the device.

    ``exempt(tensor)`` names host-side tensors whose values may be read: AdamW keeps its step
    count on the host (it is not ``capturable``), so reading it is no device sync.
    """

    def __init__(self, exempt=lambda tensor: False):
        super().__init__()
        self.exempt, self.events, self._patched = exempt, [], []

    def record(self, what: str) -> None:
        self.events.append(f"{what} at {_caller()}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if (func in VALUE_OPS and not (args and self.exempt(args[0]))) or _bool_index(func, args):
            self.record(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in HOST_COPIES:
            self._patch(torch.Tensor, name)
        for name in ("tensor", "as_tensor"):  # torch.tensor(host values, device=...) copies and waits
            self._patch(torch, name, when=lambda data, *a, **k: k.get("device") is not None
                        and not isinstance(data, torch.Tensor))
        return super().__enter__()

    def __exit__(self, *exc_info):
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched = []
        return super().__exit__(*exc_info)

    def _patch(self, owner, name, when=lambda *a, **k: True):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            by_torch = sys._getframe(1).f_code.co_filename.startswith(TORCH)
            if not by_torch and when(*args, **kwargs) and not (args and self.exempt(args[0])):
                self.record(f"{getattr(owner, '__name__', owner)}.{name}")
            return original(*args, **kwargs)

        self._patched.append((owner, name, original))
        setattr(owner, name, counted)


def count_step_syncs(trainer: Trainer, monkeypatch) -> list[str]:
    """Train one epoch of ``trainer``, recording the syncs inside every ``Trainer._step``."""
    events: list[str] = []
    original = type(trainer)._step

    def step_state(tensor) -> bool:
        return any(tensor is state.get("step") for state in trainer.optimizer.state.values())

    def counted_step(self, *args, **kwargs):
        with SyncCounter(exempt=step_state) as counter:
            result = original(self, *args, **kwargs)
        events.extend(counter.events)
        return result

    monkeypatch.setattr(type(trainer), "_step", counted_step)
    trainer._train_epoch()
    return events


def small_run(name: str, *overrides: str) -> dict:
    """Shipped config ``name`` on 8 training samples in 2 steps of 4, with a small model."""
    return load_config(name, [*SMALL_MODEL, "data.name=small_avdigits", "data.train_rows=8", "train.batch_size=4",
                              "train.epochs=1", "train.log_every=100", "train.device=cpu", "train.threads=1", *overrides])


def test_the_counter_sees_the_syncs_it_is_meant_to_see():
    x = torch.randn(6, requires_grad=True)
    with SyncCounter() as counter:
        positive = x > 0
        bool(positive.any()), x.sum().item(), positive.tolist(), x.detach().cpu(), x[positive]
        torch.equal(positive, positive), positive.nonzero(), torch.tensor([1.0], device=x.device)
        float(x.detach().sum()), x.detach().numpy(), x.detach()[torch.tensor(2)]
    assert len(counter.events) == 11, "\n".join(counter.events)
    with SyncCounter() as counter:  # device-side work reads nothing
        y = torch.where(x > 0, x, 0.0).sum() / (x > 0).sum().clamp_min(1)
        y.backward()
        torch.full((1,), 3.0, device=x.device), torch.tensor([1.0])
    assert counter.events == []


@pytest.mark.parametrize("name", SHIPPED)
def test_the_trainer_step_reads_nothing_back_from_the_device(name, small_data, tmp_path, monkeypatch):
    trainer = Trainer(small_run(name), tmp_path / "run")
    try:
        events = count_step_syncs(trainer, monkeypatch)
    finally:
        trainer.close()
    assert trainer.step_in_epoch == 2
    assert events == [], f"{len(events)} host syncs in the step of {name}:\n" + "\n".join(events)


@pytest.mark.parametrize("overrides", [("model.weighting.name=famo", "model.modality_dropout=0.5"),
                                       ("train.grad_clip=0",)])
def test_an_after_step_weighting_and_no_clipping_read_nothing_back_either(overrides, small_data, tmp_path, monkeypatch):
    trainer = Trainer(small_run("default", *overrides), tmp_path / "run")
    try:
        events = count_step_syncs(trainer, monkeypatch)
    finally:
        trainer.close()
    assert events == [], "\n".join(events)


def test_a_bad_batch_is_refused_by_the_loader_on_the_host_with_the_models_error(small_data, tmp_path, monkeypatch):
    trainer = Trainer(small_run("default"), tmp_path / "run")
    original = FewRows.batch

    def bad_class(self, rows):
        batch = original(self, rows)
        batch.targets["image_digit"][1] = 12
        return batch

    monkeypatch.setattr(FewRows, "batch", bad_class)
    steps = []
    monkeypatch.setattr(Trainer, "_step", lambda self, batch: steps.append(batch))
    try:
        with pytest.raises(ValueError, match=r"task 'image_digit' \(cross_entropy\): target class 12 at sample 1 "
                                             r"is out of range \[0, 10\)"):
            trainer._train_epoch()
    finally:
        trainer.close()
    assert steps == []  # refused before the copy to the device


def test_the_value_checks_are_on_for_direct_calls_and_off_when_switched_off_or_compiling(monkeypatch):
    from mtmm_kernels import cross_modal_attention

    q = torch.randn(2, 1, 3, 4)
    with pytest.raises(ValueError, match="key_lengths must lie in"):
        cross_modal_attention(q, q, q, key_lengths=torch.tensor([3, 9]))
    with value_checks(False):
        cross_modal_attention(q, q, q, key_lengths=torch.tensor([3, 2]))
        with value_checks(True):
            with pytest.raises(ValueError, match="key_lengths must lie in"):
                cross_modal_attention(q, q, q, key_lengths=torch.tensor([3, 9]))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with SyncCounter() as counter:
        cross_modal_attention(q, q, q, key_lengths=torch.tensor([3, 2]))
    assert counter.events == []


def test_a_non_finite_loss_is_found_at_the_next_read_naming_the_task_and_the_steps(small_data, tmp_path, monkeypatch):
    trainer = Trainer(small_config("train.epochs=2", "data.train_rows=64", "train.batch_size=16", "train.log_every=2",
                                   "train.threads=1"),
                      tmp_path / "run")
    original, calls, reads = FewRows.batch, {"n": 0}, []

    def poisoned(self, rows):
        batch = original(self, rows)
        if self.rows == 64:
            calls["n"] += 1
            if calls["n"] == 7:  # epoch 2, step 3 of 4
                batch.targets["digit_sum"][0] = float("nan")
        return batch

    read = Trainer._read_losses
    monkeypatch.setattr(Trainer, "_read_losses", lambda self: reads.append(self.step_in_epoch) or read(self))
    monkeypatch.setattr(FewRows, "batch", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"the loss of task 'digit_sum' is not finite at epoch 2, step 3 of 4 "
                                                 r"\(found at step 4: the losses are read every train.log_every = 2 "
                                                 r"steps; by then also task 'image_digit', 'audio_digit', 'match'\)"):
        trainer.run()
    assert reads == [2, 4, 2, 4]  # every log_every steps and at the end of the epoch, not after every step
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_train_compile_compiles_the_forward_pass_and_the_losses(small_data, tmp_path, monkeypatch):
    compiled = []

    def fake_compile(function, **options):
        compiled.append(function)
        return function

    monkeypatch.setattr(trainer_module.torch, "compile", fake_compile)
    assert Trainer(small_run("default"), tmp_path / "plain", read_only=True)._forward_and_losses is \
        trainer_module.forward_and_losses
    assert compiled == []
    trainer = Trainer(small_run("default", "train.compile=true"), tmp_path / "compiled")
    try:
        trainer._train_epoch()
    finally:
        trainer.close()
    assert compiled == [trainer_module.forward_and_losses] and trainer.step_in_epoch == 2


def test_log_every_changes_when_the_losses_are_read_not_what_is_trained(small_data, tmp_path):
    runs = {}
    for every in (1, 3):
        trainer = Trainer(small_run("default", "data.train_rows=20", f"train.log_every={every}"), tmp_path / str(every))
        try:
            trainer._train_epoch()
        finally:
            trainer.close()
        runs[every] = (trainer.model.state_dict(), trainer._epoch_means().tolist())
    (weights_1, means_1), (weights_3, means_3) = runs[1], runs[3]
    assert means_1 == means_3
    assert all(torch.equal(weights_1[key], weights_3[key]) for key in weights_1)


@pytest.mark.parametrize("overrides", [("train.precision=bf16",), ("train.grad_accumulation=2",),
                                       ("train.grad_accumulation=2", "model.weighting.name=pcgrad")])
def test_bf16_and_gradient_accumulation_read_nothing_back(overrides, small_data, tmp_path, monkeypatch):
    trainer = Trainer(small_run("default", *overrides), tmp_path / "run")
    try:
        events = count_step_syncs(trainer, monkeypatch)
    finally:
        trainer.close()
    assert trainer.step_in_epoch == 2
    assert events == [], "\n".join(events)


@pytest.fixture
def one_rank_group(monkeypatch):
    """A gloo process group of one rank, and a trainer context that counts as several processes, so that
    the DDP and FSDP engines wrap the model as they do under torchrun."""
    import types

    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    context = types.SimpleNamespace(rank=0, world_size=1, local_rank=0, active=True, is_main=True)
    monkeypatch.setattr(trainer_module.distributed, "setup", lambda *args, **kwargs: context)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("weighting", ["uncertainty", "pcgrad"])  # pcgrad: gradient-level, sync-free
def test_the_ddp_and_fsdp_steps_read_nothing_back(strategy, weighting, one_rank_group, small_data, tmp_path,
                                                  monkeypatch):
    trainer = Trainer(small_run("default", f"train.strategy={strategy}", f"model.weighting.name={weighting}"),
                      tmp_path / "run")
    try:
        assert trainer.strategy.network is not trainer.model or strategy == "fsdp"  # wrapped in DDP
        assert strategy != "fsdp" or type(trainer.model).__name__.startswith("FSDP")  # sharded in place
        events = count_step_syncs(trainer, monkeypatch)
    finally:
        trainer.close()
    assert trainer.step_in_epoch == 2
    assert events == [], f"{len(events)} host syncs in the {strategy} step:\n" + "\n".join(events)
