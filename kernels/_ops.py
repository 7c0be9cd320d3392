"""The kernels as PyTorch operators (namespace ``mtmm``), so that ``torch.compile`` traces through them.

Two kinds of operator:

- ``mtmm::cross_modal_attention`` and ``mtmm::multitask_loss`` are the dispatching operators
  behind the public functions. They are *CompositeImplicitAutograd*: their body (the backend
  choice, then the Triton operator or the PyTorch fallback) runs on whatever tensors arrive,
  real or fake. In eager mode the fallback therefore records the same autograd graph as
  plain PyTorch code; under ``torch.compile`` the body is traced
  once per guard set, the choice is made at trace time from the device, dtype, shapes and
  ``MTMM_KERNEL_BACKEND``, and the fallback's ATen ops reach Inductor like any other code.
- ``mtmm::attention_triton`` / ``mtmm::attention_triton_backward`` and
  ``mtmm::multitask_loss_triton`` / ``mtmm::multitask_loss_triton_backward`` wrap the Triton
  launches as opaque custom ops (``torch.library.custom_op``) with fake implementations
  (output shapes and dtypes, also of what the backward needs: the log-sum-exp and the
  labelled counts) and registered autograd. The compiler treats each launch as one node;
  its fake implementation stands in for it while tracing. Their backward operators have
  no autograd of their own (as ``once_differentiable``: double backward raises).

Everything used here (``torch.library.Library``, ``custom_op``, ``register_fake``,
``register_autograd``, ``opcheck``) exists from torch 2.4 on; the project runs it on torch 2.11
and 2.13. ``torch.library.triton_op`` + ``wrap_triton`` are not used: the loss kernel takes tuples
of pointers and constexpr tuples and the attention kernels prune their autotune configs
(``early_config_prune``), and whether Inductor's user-defined-Triton support takes those on
torch 2.11 cannot be checked without a GPU; an opaque operator loses nothing here, the launches
being fused kernels already (Inductor has nothing to fuse into them).

Triton is imported only inside the Triton operators' bodies, never by importing this module.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from torch import Tensor

NAMESPACE = "mtmm"

_lib = torch.library.Library(NAMESPACE, "FRAGMENT")  # kept alive for as long as the registrations are used


def _resolve_attention_backend(backend: str, q: Tensor, k: Tensor, v: Tensor, key_lengths: Optional[Tensor],
                               key_padding_mask: Optional[Tensor], scale: float) -> str:
    from ._validate import AttentionArgs
    from .attention import resolve_backend

    return resolve_backend(backend, AttentionArgs(q, k, v, key_lengths, key_padding_mask, scale))


# ----------------------------------------------------------------------------- attention


_lib.define(
    "cross_modal_attention(Tensor q, Tensor k, Tensor v, Tensor? key_lengths, Tensor? key_padding_mask, "
    "float scale, str backend) -> Tensor"
)


def cross_modal_attention_impl(q: Tensor, k: Tensor, v: Tensor, key_lengths: Optional[Tensor],
                               key_padding_mask: Optional[Tensor], scale: float, backend: str) -> Tensor:
    """Body of ``mtmm::cross_modal_attention`` (arguments validated by the public function)."""
    if _resolve_attention_backend(backend, q, k, v, key_lengths, key_padding_mask, scale) == "triton":
        if q.shape[0] == 0 or q.shape[1] == 0 or q.shape[2] == 0:
            return q * 0  # empty: nothing to launch
        kv_len = None
        if key_lengths is not None:
            kv_len = key_lengths.to(torch.int32)
        elif key_padding_mask is not None:  # one past the last valid key: later key blocks are skipped
            positions = torch.arange(1, k.shape[2] + 1, device=q.device, dtype=torch.int32)
            kv_len = torch.where(key_padding_mask, positions, 0).amax(dim=1).to(torch.int32)
        out, _ = attention_triton(q, k, v, kv_len, key_padding_mask, scale)
        return out
    from .attention_torch import attention_torch

    return attention_torch(q, k, v, key_lengths, key_padding_mask, scale)


_lib.impl("cross_modal_attention", cross_modal_attention_impl, "CompositeImplicitAutograd")


def _device_guard(device: torch.device):
    """Make ``device`` the current GPU while launching (Triton launches on the current one)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _check_triton_device(device: torch.device, what: str) -> None:
    from ._backend import triton_interpreting

    if device.type != "cuda" and not triton_interpreting():
        raise ValueError(f"backend='triton' cannot run the {what} on {device} tensors without TRITON_INTERPRET=1")


@torch.library.custom_op(f"{NAMESPACE}::attention_triton", mutates_args=())
def attention_triton(q: Tensor, k: Tensor, v: Tensor, kv_len: Optional[Tensor], key_padding_mask: Optional[Tensor],
                     scale: float) -> tuple[Tensor, Tensor]:
    """The fused forward: ``out`` ``[B, H, Lq, D]`` (dtype of q) and the base-2 log-sum-exp ``[B, H, Lq]``
    (float32). ``kv_len`` int32 ``[B]`` (lengths, or one past a mask's last True), ``key_padding_mask`` bool."""
    _check_triton_device(q.device, "attention kernel")
    from . import attention_triton as kernels  # lazy: imports triton

    mask = None if key_padding_mask is None else key_padding_mask.view(torch.uint8)
    return kernels._forward(q, k, v, kv_len, mask, scale)


@attention_triton.register_fake
def _attention_triton_fake(q, k, v, kv_len, key_padding_mask, scale):
    B, H, Lq, D = q.shape
    return q.new_empty((B, H, Lq, D)), q.new_empty((B, H, Lq), dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::attention_triton_backward", mutates_args=())
def attention_triton_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                              kv_len: Optional[Tensor], key_padding_mask: Optional[Tensor],
                              scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` (contiguous, dtypes of q, k, v) from the upstream gradient and the saved forward."""
    _check_triton_device(q.device, "attention kernel")
    from . import attention_triton as kernels  # lazy: imports triton

    mask = None if key_padding_mask is None else key_padding_mask.view(torch.uint8)
    return kernels._backward(grad_out, q, k, v, out, lse, kv_len, mask, scale)


@attention_triton_backward.register_fake
def _attention_triton_backward_fake(grad_out, q, k, v, out, lse, kv_len, key_padding_mask, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup_context(ctx, inputs, output) -> None:
    q, k, v, kv_len, key_padding_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_len, key_padding_mask)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _attention_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, kv_len, key_padding_mask = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = attention_triton_backward(grad_out, q, k, v, out, lse, kv_len, key_padding_mask, ctx.scale)
    return dq, dk, dv, None, None, None


attention_triton.register_autograd(_attention_backward, setup_context=_attention_setup_context)


# ----------------------------------------------------------------------------- multitask loss


_lib.define(
    "multitask_loss(Tensor[] preds, Tensor[] targets, str[] kinds, Tensor?[] masks, Tensor task_weights, "
    "Tensor? log_vars, int ignore_index, str backend) -> (Tensor, Tensor)"
)


def _loss_args(preds: Sequence[Tensor], targets: Sequence[Tensor], kinds: Sequence[str],
               masks: Sequence[Optional[Tensor]], task_weights: Tensor, log_vars: Optional[Tensor],
               ignore_index: int):
    from .multitask_loss_validate import MultitaskArgs

    loss_dtype = torch.float64 if any(p.dtype == torch.float64 for p in preds) else torch.float32
    return MultitaskArgs(tuple(preds), tuple(targets), tuple(kinds), tuple(masks), task_weights, log_vars,
                         int(ignore_index), loss_dtype)


def multitask_loss_impl(preds: list[Tensor], targets: list[Tensor], kinds: list[str],
                        masks: list[Optional[Tensor]], task_weights: Tensor, log_vars: Optional[Tensor],
                        ignore_index: int, backend: str) -> tuple[Tensor, Tensor]:
    """Body of ``mtmm::multitask_loss`` (arguments validated by the public function)."""
    from .multitask_loss import resolve_multitask_backend
    from .multitask_loss_torch import multitask_loss_torch

    a = _loss_args(preds, targets, kinds, masks, task_weights, log_vars, ignore_index)
    if resolve_multitask_backend(backend, a) == "triton" and sum(p.shape[0] for p in preds) > 0:
        total, per_task, _, _ = multitask_loss_triton(list(preds), list(targets), _kind_codes(kinds), list(masks),
                                                      task_weights, log_vars, a.ignore_index)
        return total, per_task
    return multitask_loss_torch(a)


_lib.impl("multitask_loss", multitask_loss_impl, "CompositeImplicitAutograd")

#: Device copies of small constant vectors (per-task row widths), made once per value and device:
#: a host-to-device copy on every call would block the host and is illegal in CUDA graph capture.
_DEVICE_CONSTANTS: dict[tuple, Tensor] = {}


def _device_constant(values: Sequence[float], device: torch.device) -> Tensor:
    key = (tuple(values), str(device))
    cached = _DEVICE_CONSTANTS.get(key)
    if cached is None:
        if len(_DEVICE_CONSTANTS) > 4096:
            _DEVICE_CONSTANTS.clear()
        cached = _DEVICE_CONSTANTS[key] = torch.tensor(values, dtype=torch.float32, device=device)
    return cached


def _kind_codes(kinds: Sequence[str]) -> list[int]:
    """Loss kinds as their index in ``KINDS`` (custom operators take no list of strings)."""
    from .multitask_loss_validate import KINDS

    return [KINDS.index(kind) for kind in kinds]


def _kind_names(codes: Sequence[int]) -> tuple[str, ...]:
    from .multitask_loss_validate import KINDS

    return tuple(KINDS[code] for code in codes)


def _lse_rows(preds: Sequence[Tensor], kind_codes: Sequence[int]):
    """Rows of the saved log-sum-exp: one per cross-entropy sample, at least 1 (as ``_Plan.lse_rows``)."""
    rows = sum(p.shape[0] for p, kind in zip(preds, _kind_names(kind_codes)) if kind == "cross_entropy")
    return torch.sym_max(rows, 1)


class _Launch:
    """Per-call launch inputs of the forward and backward Triton operators, as
    ``multitask_loss_triton.launch_forward`` / ``launch_backward`` take them."""

    def __init__(self, preds, targets, kind_codes, masks, task_weights, log_vars, ignore_index):
        from . import multitask_loss_triton as kernels  # lazy: imports triton

        self.kernels = kernels
        self.preds = tuple(p.contiguous() for p in preds)
        a = _loss_args(self.preds, targets, _kind_names(kind_codes), masks, task_weights, log_vars, ignore_index)
        self.plan = kernels._Plan(a)
        self.device = self.preds[0].device
        self.targets = tuple(t.contiguous() for t in targets)
        self.masks = tuple(p if m is None else m.contiguous() for p, m in zip(self.preds, masks))  # unused if None
        self.weights = task_weights.float().contiguous()
        self.s = (log_vars.detach().float() if log_vars is not None else self.weights).contiguous()
        self.row_widths = _device_constant(self.plan.row_widths, self.device)
        self.ignore_index = int(ignore_index)
        self.has_log_vars = log_vars is not None


@torch.library.custom_op(f"{NAMESPACE}::multitask_loss_triton", mutates_args=())
def multitask_loss_triton(preds: list[Tensor], targets: list[Tensor], kind_codes: list[int],
                          masks: list[Optional[Tensor]], task_weights: Tensor, log_vars: Optional[Tensor],
                          ignore_index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fused forward launch: ``total`` ``[]``, ``per_task`` ``[T]`` (float32), and for the backward the
    per-row log-sum-exp of the cross-entropy tasks (float32 ``[max(1, sum B_ce)]``) and the labelled
    counts (int32 ``[T]``)."""
    _check_triton_device(preds[0].device, "multitask loss")
    launch = _Launch(preds, targets, kind_codes, masks, task_weights, log_vars, ignore_index)
    with _device_guard(launch.device):
        out, lse, counts = launch.kernels.launch_forward(
            launch.plan, launch.preds, launch.targets, launch.masks, launch.weights, launch.s, launch.row_widths,
            launch.ignore_index, launch.has_log_vars)
    return out[0].clone(), out[1:].clone(), lse, counts


@multitask_loss_triton.register_fake
def _multitask_loss_triton_fake(preds, targets, kind_codes, masks, task_weights, log_vars, ignore_index):
    p = preds[0]
    T = len(preds)
    return (p.new_empty((), dtype=torch.float32), p.new_empty((T,), dtype=torch.float32),
            p.new_empty((_lse_rows(preds, kind_codes),), dtype=torch.float32), p.new_empty((T,), dtype=torch.int32))


@torch.library.custom_op(f"{NAMESPACE}::multitask_loss_triton_backward", mutates_args=())
def multitask_loss_triton_backward(grad_total: Tensor, grad_per_task: Tensor, preds: list[Tensor],
                                   targets: list[Tensor], kind_codes: list[int], masks: list[Optional[Tensor]],
                                   task_weights: Tensor, log_vars: Optional[Tensor], lse: Tensor, counts: Tensor,
                                   ignore_index: int) -> list[Tensor]:
    """Gradients of every prediction (contiguous, in its dtype) from the upstream gradients of
    ``total`` ``[]`` and ``per_task`` ``[T]`` and the forward's log-sum-exp and counts."""
    _check_triton_device(preds[0].device, "multitask loss")
    launch = _Launch(preds, targets, kind_codes, masks, task_weights, log_vars, ignore_index)
    grad_out = torch.cat([grad_total.float().reshape(1), grad_per_task.float().reshape(-1)]).contiguous()
    with _device_guard(launch.device):
        grads = launch.kernels.launch_backward(
            launch.plan, launch.preds, launch.targets, launch.masks, lse, counts, launch.weights, launch.s,
            launch.row_widths, grad_out, launch.ignore_index, launch.has_log_vars)
    return list(grads)


@multitask_loss_triton_backward.register_fake
def _multitask_loss_triton_backward_fake(grad_total, grad_per_task, preds, targets, kind_codes, masks, task_weights,
                                         log_vars, lse, counts, ignore_index):
    return [p.new_empty(p.shape) for p in preds]


def _loss_setup_context(ctx, inputs, output) -> None:
    preds, targets, kind_codes, masks, task_weights, log_vars, ignore_index = inputs
    total, per_task, lse, counts = output
    mask_list = list(masks)
    present = [m is not None for m in mask_list]
    ctx.save_for_backward(task_weights, log_vars, per_task, lse, counts, *preds, *targets,
                          *[m for m in mask_list if m is not None])
    ctx.num_tasks, ctx.kind_codes, ctx.present, ctx.ignore_index = len(preds), list(kind_codes), present, ignore_index
    ctx.mark_non_differentiable(lse, counts)


def _loss_backward(ctx, grad_total, grad_per_task, grad_lse, grad_counts):
    task_weights, log_vars, per_task, lse, counts, *rest = ctx.saved_tensors
    T = ctx.num_tasks
    preds, targets, given = rest[:T], rest[T:2 * T], iter(rest[2 * T:])
    masks = [next(given) if present else None for present in ctx.present]
    grad_total = per_task.new_zeros(()) if grad_total is None else grad_total
    grad_per_task = torch.zeros_like(per_task) if grad_per_task is None else grad_per_task
    grads = multitask_loss_triton_backward(grad_total, grad_per_task, list(preds), list(targets), ctx.kind_codes, masks,
                                           task_weights, log_vars, lse, counts, ctx.ignore_index)
    grad_s = None
    if log_vars is not None:  # d/ds_i of c_i exp(-s_i) L_i + 0.5 s_i
        s = log_vars.float()
        grad_s = (grad_total.float() * (0.5 - task_weights.float() * torch.exp(-s) * per_task)).to(log_vars.dtype)
    return grads, [None] * T, None, None, None, grad_s, None  # a list of targets needs a list of Nones


multitask_loss_triton.register_autograd(_loss_backward, setup_context=_loss_setup_context)
