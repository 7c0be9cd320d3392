"""torch.compile traces through both kernels and through the model with no graph break.

The kernels are the operators ``mtmm::cross_modal_attention`` and ``mtmm::multitask_loss``
(kernels/_ops.py), whose body chooses the backend; the Triton launches are the custom operators
``mtmm::attention_triton`` and ``mtmm::multitask_loss_triton`` with fake implementations and
registered autograd. Here, on the CPU: graph-break counts (``torch._dynamo.explain``), compiled
outputs and gradients against eager ones (float64 for the fallback), ``torch.library.opcheck``,
the fake implementations on meta tensors, the Triton operators compiled under Triton's
interpreter, and ``fullgraph=True`` forward + ``compute_loss`` + backward of every shipped config.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch._dynamo

from mtmm_core.config import CONFIG_DIR, load_config
from mtmm_core.data import complete_model_spec
from mtmm_core.spec import build_model
from mtmm_kernels import cross_modal_attention, multitask_loss

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
f64 = torch.float64
#: Shipped configs whose model still breaks the graph, with the break (file:line, what): xfail(strict).
MODEL_BREAKS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (no recompile limit carried over, no cached graph)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _explain(fn, *args):
    explanation = torch._dynamo.explain(fn)(*args)
    reasons = [f"{r.user_stack[-1].filename}:{r.user_stack[-1].lineno}: {r.reason.splitlines()[0]}"
               if r.user_stack else r.reason.splitlines()[0] for r in explanation.break_reasons]
    return explanation, reasons


def _qkv(B=3, H=2, Lq=77, Lk=257, D=16, dtype=f64, device="cpu"):
    torch.manual_seed(0)
    return tuple(torch.randn(B, H, L, D, dtype=dtype, device=device, requires_grad=True) for L in (Lq, Lk, Lk))


def _key_args(B=3, Lk=257, device="cpu"):
    """Lengths with 0 and Lk; a random mask whose first row is all False."""
    lengths = torch.tensor([0, Lk // 2 + 1, Lk], device=device)[:B]
    mask = torch.rand(B, Lk, device=device) < 0.5
    mask[0] = False
    return lengths, mask


def _all_maskings(q, k, v, lengths, mask, backend="auto"):
    return (cross_modal_attention(q, k, v, key_lengths=lengths, backend=backend),
            cross_modal_attention(q, k, v, key_padding_mask=mask, backend=backend),
            cross_modal_attention(q, k, v, backend=backend))


def _grads(outputs, inputs):
    weights = [torch.linspace(-1, 2, o.numel(), dtype=o.dtype, device=o.device).view_as(o) for o in outputs]
    objective = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(objective, inputs)


def _loss_tasks(dtype=f64, device="cpu"):
    """Mixed kinds, widths and batch sizes; masks, ignored classes, a task with no label."""
    torch.manual_seed(1)
    ce = torch.randn(13, 7, dtype=dtype, device=device, requires_grad=True)
    ce_target = torch.randint(0, 7, (13,), device=device)
    ce_target[::4] = -100
    bce = torch.randn(13, 3, dtype=dtype, device=device, requires_grad=True)
    bce_target = torch.rand(13, 3, device=device)
    bce_mask = torch.rand(13, device=device) < 0.6
    mse = torch.randn(9, dtype=dtype, device=device, requires_grad=True)
    huber = torch.randn(5, 2, dtype=dtype, device=device, requires_grad=True)
    preds = [ce, bce, mse, huber]
    targets = [ce_target, bce_target, torch.randn(9, device=device).to(dtype), torch.randn(5, 2, device=device)]
    masks = [None, bce_mask, None, torch.zeros(5, dtype=torch.bool, device=device)]
    return preds, targets, ["cross_entropy", "bce", "mse", "huber"], masks


# ----------------------------------------------------------------------------- kernel level: breaks


@pytest.mark.parametrize("masking", ["lengths", "mask", "none"])
def test_attention_has_no_graph_break(masking):
    q, k, v = _qkv(dtype=torch.float32)
    lengths, mask = _key_args()
    kwargs = {"lengths": {"key_lengths": lengths}, "mask": {"key_padding_mask": mask}, "none": {}}[masking]
    explanation, reasons = _explain(lambda q, k, v: cross_modal_attention(q, k, v, **kwargs), q, k, v)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, reasons
    ops = [str(n.target) for g in explanation.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert "mtmm.cross_modal_attention" in ops, ops  # the backend choice happens inside the operator


def test_multitask_loss_has_no_graph_break():
    preds, targets, kinds, masks = _loss_tasks(torch.float32)
    log_vars = torch.zeros(4, requires_grad=True)
    explanation, reasons = _explain(
        lambda *p: multitask_loss(list(p), targets, kinds, task_masks=masks, log_vars=log_vars), *preds)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, reasons
    ops = [str(n.target) for g in explanation.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert "mtmm.multitask_loss" in ops, ops


# ----------------------------------------------------------------------------- kernel level: values


def test_compiled_attention_equals_eager_float64():
    """77 queries over 257 keys; lengths 0 and Lk; a fully masked row; Inductor, forward and backward."""
    q, k, v = _qkv()
    lengths, mask = _key_args()
    compiled = torch.compile(_all_maskings, fullgraph=True)
    got = compiled(q, k, v, lengths, mask)
    want = _all_maskings(q, k, v, lengths, mask)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)
    assert torch.equal(got[0][0], torch.zeros_like(got[0][0])) and torch.equal(got[1][0], torch.zeros_like(got[1][0]))
    for name, g, w in zip("qkv", _grads(got, (q, k, v)), _grads(want, (q, k, v))):
        assert torch.isfinite(g).all(), f"d{name}"
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12, msg=lambda m: f"d{name}: {m}")


def test_compiled_multitask_loss_equals_eager_float64():
    preds, targets, kinds, masks = _loss_tasks()
    log_vars = torch.tensor([0.3, -0.2, 0.0, 0.5], dtype=f64, requires_grad=True)

    def loss(*p):
        total, per_task = multitask_loss(list(p[:-1]), targets, kinds, task_masks=masks, log_vars=p[-1])
        return total + (per_task * torch.arange(1.0, 5.0, dtype=per_task.dtype)).sum(), per_task

    compiled = torch.compile(loss, fullgraph=True)
    got, want = compiled(*preds, log_vars), loss(*preds, log_vars)
    assert got[1].dtype == f64 and got[1][3] == 0  # the task without a label counts 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)
    inputs = (*preds, log_vars)
    for g, w in zip(torch.autograd.grad(got[0], inputs), torch.autograd.grad(want[0], inputs)):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


def test_eager_fallback_keeps_plain_autograd():
    """The fallback runs as ATen ops under the dispatching operator: its autograd graph is PyTorch's own."""
    q, k, v = _qkv(B=2, H=1, Lq=3, Lk=5, D=4)
    out = cross_modal_attention(q, k, v, key_lengths=torch.tensor([0, 3]), backend="torch")
    assert type(out.grad_fn).__name__ == "WhereBackward0"
    pred = torch.randn(4, 3, dtype=f64, requires_grad=True)
    total, _ = multitask_loss([pred], [torch.tensor([0, 1, 2, 1])], ["cross_entropy"], backend="torch")
    assert "Sum" in type(total.grad_fn).__name__


def test_jit_trace_records_aten_ops_not_mtmm_operators():
    """torch.jit.trace and the TorchScript ONNX exporter see the fallback's ATen ops (loadable without mtmm)."""
    q, k, v = (t.detach() for t in _qkv(B=2, H=1, Lq=3, Lk=5, D=4, dtype=torch.float32))
    traced = torch.jit.trace(lambda q, k, v: cross_modal_attention(q, k, v, key_lengths=torch.tensor([2, 5])),
                             (q, k, v))
    assert "mtmm::" not in str(traced.graph)
    torch.testing.assert_close(traced(q, k, v), cross_modal_attention(q, k, v, key_lengths=torch.tensor([2, 5])))


# ----------------------------------------------------------------------------- operators


def test_opcheck_dispatching_operators():
    q, k, v = _qkv(B=3, H=2, Lq=7, Lk=13, D=8)
    lengths, mask = _key_args(Lk=13)
    attention = torch.ops.mtmm.cross_modal_attention.default
    torch.library.opcheck(attention, (q, k, v, lengths, None, 0.3, "torch"))
    torch.library.opcheck(attention, (q, k, v, None, mask, 0.3, "auto"))
    preds, targets, kinds, masks = _loss_tasks()
    log_vars = torch.zeros(4, dtype=f64, requires_grad=True)
    torch.library.opcheck(torch.ops.mtmm.multitask_loss.default,
                          (preds, targets, kinds, masks, torch.full((4,), 0.5, dtype=f64), log_vars, -100, "torch"))


def test_fake_implementations_give_every_output():
    """On meta tensors (no triton import): shapes and dtypes of the outputs and of what backward keeps."""
    q = torch.empty(2, 3, 5, 24, dtype=torch.bfloat16, device="meta")
    k = torch.empty(2, 3, 9, 24, dtype=torch.bfloat16, device="meta")
    out, lse = torch.ops.mtmm.attention_triton(q, k, k, None, None, 0.2)
    assert (out.shape, out.dtype, lse.shape, lse.dtype) == ((2, 3, 5, 24), torch.bfloat16, (2, 3, 5), torch.float32)
    dq, dk, dv = torch.ops.mtmm.attention_triton_backward(out, q, k, k, out, lse, None, None, 0.2)
    assert (dq.shape, dk.shape, dv.shape) == ((2, 3, 5, 24), (2, 3, 9, 24), (2, 3, 9, 24)) and dk.dtype == q.dtype
    preds = [torch.empty(4, 3, dtype=torch.float16, device="meta"), torch.empty(6, device="meta"),
             torch.empty(5, 10, device="meta")]
    targets = [torch.empty(4, dtype=torch.long, device="meta"), torch.empty(6, device="meta"),
               torch.empty(5, dtype=torch.long, device="meta")]
    weights = torch.empty(3, device="meta")
    total, per_task, lse, counts = torch.ops.mtmm.multitask_loss_triton(preds, targets, [0, 2, 0], [None] * 3,
                                                                        weights, None, -100)
    assert (total.shape, per_task.shape, lse.shape, counts.shape) == ((), (3,), (9,), (3,))
    assert total.dtype == per_task.dtype == lse.dtype == torch.float32 and counts.dtype == torch.int32
    grads = torch.ops.mtmm.multitask_loss_triton_backward(total, per_task, preds, targets, [0, 2, 0], [None] * 3,
                                                          weights, None, lse, counts, -100)
    assert [(g.shape, g.dtype) for g in grads] == [(p.shape, p.dtype) for p in preds]
    _, _, lse, _ = torch.ops.mtmm.multitask_loss_triton(preds[1:2], targets[1:2], [2], [None], weights[:1], None, -100)
    assert lse.shape == (1,)  # no cross-entropy task: one unused row, as the kernel allocates


# ----------------------------------------------------------------------------- Triton operators


needs_triton_runtime = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton kernels need CUDA or TRITON_INTERPRET=1 (tests/conftest.py sets it without CUDA)")
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@needs_triton_runtime
def test_opcheck_triton_operators():
    pytest.importorskip("triton")
    q, k, v = _qkv(B=3, H=1, Lq=9, Lk=20, D=16, dtype=torch.float32, device=TRITON_DEVICE)
    lengths, mask = _key_args(Lk=20, device=TRITON_DEVICE)
    torch.library.opcheck(torch.ops.mtmm.attention_triton.default,
                          (q, k, v, lengths.to(torch.int32), None, 0.25))
    last = torch.where(mask, torch.arange(1, 21, device=TRITON_DEVICE), 0).amax(dim=1).to(torch.int32)
    torch.library.opcheck(torch.ops.mtmm.attention_triton.default, (q, k, v, last, mask, 0.25))
    preds, targets, _, masks = _loss_tasks(torch.float32, TRITON_DEVICE)
    log_vars = torch.zeros(4, device=TRITON_DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.mtmm.multitask_loss_triton.default,
                          (preds, targets, [0, 1, 2, 4], masks, torch.full((4,), 0.5, device=TRITON_DEVICE),
                           log_vars, -100))


@needs_triton_runtime
def test_compiled_triton_path_equals_eager():
    """backend="triton" under torch.compile(fullgraph=True): the launches are graph nodes, the values are eager's."""
    pytest.importorskip("triton")
    q, k, v = _qkv(B=3, H=1, Lq=33, Lk=65, D=16, dtype=torch.float32, device=TRITON_DEVICE)
    lengths, mask = _key_args(Lk=65, device=TRITON_DEVICE)
    preds, targets, kinds, masks = _loss_tasks(torch.float32, TRITON_DEVICE)
    log_vars = torch.zeros(4, device=TRITON_DEVICE, requires_grad=True)

    def step(q, k, v, log_vars, *preds):
        outs = _all_maskings(q, k, v, lengths, mask, backend="triton")
        total, per_task = multitask_loss(list(preds), targets, kinds, task_masks=masks, log_vars=log_vars,
                                         backend="triton")
        return (*outs, total, per_task)

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm.code)
        return gm

    from torch._dynamo.backends.common import aot_autograd

    inputs = (q, k, v, log_vars, *preds)
    got = torch.compile(step, fullgraph=True, backend=aot_autograd(fw_compiler=record, bw_compiler=record))(*inputs)
    want = step(*inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    for g, w in zip(_grads(got, inputs), _grads(want, inputs)):
        torch.testing.assert_close(g, w)
    forward, backward = graphs  # the backward graph is compiled when backward first runs
    assert "mtmm.attention_triton.default" in forward and "mtmm.multitask_loss_triton.default" in forward
    assert "mtmm.attention_triton_backward" in backward and "mtmm.multitask_loss_triton_backward" in backward


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton_runtime)])
def test_dynamic_shapes(backend):
    """``dynamic=True``: one graph serves new batch sizes and lengths (fake implementations on symbolic sizes)."""
    if backend == "triton":
        pytest.importorskip("triton")
    device = TRITON_DEVICE if backend == "triton" else "cpu"

    def step(q, k, lengths, ce, ce_target, mse, mse_target):
        out = cross_modal_attention(q, k, k, key_lengths=lengths, backend=backend)
        total, _ = multitask_loss([ce, mse], [ce_target, mse_target], ["cross_entropy", "mse"], backend=backend)
        return out, total

    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")
    for B, Lq, Lk in ((2, 5, 9), (3, 7, 17)):
        torch.manual_seed(B)
        q, k = (torch.randn(B, 1, L, 16, device=device, requires_grad=True) for L in (Lq, Lk))
        ce = torch.randn(B, 4, device=device, requires_grad=True)
        mse = torch.randn(B + 1, device=device, requires_grad=True)
        args = (q, k, torch.randint(0, Lk + 1, (B,), device=device), ce, torch.randint(0, 4, (B,), device=device),
                mse, torch.randn(B + 1, device=device))
        got, want = compiled(*args), step(*args)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        for g, w in zip(_grads(got, (q, k, ce, mse)), _grads(want, (q, k, ce, mse))):
            torch.testing.assert_close(g, w)


# ----------------------------------------------------------------------------- model level


@pytest.fixture(scope="module")
def avdigits_batch():
    from mtmm_plugins.datasets.avdigits import AVDigits

    data = AVDigits(seed=0)
    return data, data.splits["train"].batch(np.arange(8))


def _config_param(name: str):
    if name in MODEL_BREAKS:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=MODEL_BREAKS[name]))
    return name


def _model_and_step(name: str, data):
    torch.manual_seed(0)
    model = build_model(complete_model_spec(load_config(name)["model"], data))

    def step(inputs, lengths, targets):
        total, losses = model.compute_loss(model(inputs, lengths), targets)
        return total, torch.stack(list(losses.values()))

    return model, step


@pytest.mark.parametrize("name", [_config_param(n) for n in SHIPPED])
def test_model_forward_and_loss_compile_without_graph_break(name, avdigits_batch):
    """Training mode (dropout, modality dropout): ``torch.compile(fullgraph=True)`` of forward + compute_loss
    traces as one graph (it raises on a break), and AOTAutograd traces its backward."""
    data, batch = avdigits_batch
    model, step = _model_and_step(name, data)
    model.train()
    total, per_task = torch.compile(step, fullgraph=True, backend="aot_eager")(batch.inputs, batch.lengths,
                                                                               batch.targets)
    total.backward()
    assert torch.isfinite(total) and per_task.shape == (len(model.tasks),)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_compiled_default_model_equals_eager(avdigits_batch):
    """Eval mode (no randomness): compiled loss, per-task losses and every gradient equal eager ones."""
    data, batch = avdigits_batch
    model, step = _model_and_step("default", data)
    model.eval()
    args = (batch.inputs, batch.lengths, batch.targets)
    got, want = torch.compile(step, fullgraph=True, backend="aot_eager")(*args), step(*args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(got[0], params, allow_unused=True)
    want_grads = torch.autograd.grad(want[0], params, allow_unused=True)
    for g, w in zip(got_grads, want_grads):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
