"""Fused multitask loss in Triton: one forward launch for all tasks and the weighting, one backward launch.

Layout. Each task is cut into tiles of ``BLOCK_R`` rows; the launch grid is the
concatenation of every task's tiles, and ``starts[t]`` is task ``t``'s first program.
Task metadata travels as tuples: tensors (predictions, targets, masks, gradients) and
runtime ints (batch, row width), plus constexpr tuples (loss kind, mask present, tile
sizes), so the kernel is specialised once per task configuration.

Forward. A tile reads its rows once (rows without a label are not read): cross entropy
streams the row in ``BLOCK_C`` chunks with an online log-sum-exp and saves it per row
(float32 ``[B]``); the other kinds sum their elementwise terms. Each tile adds its loss
sum and labelled count to per-task accumulators (atomics); the last tile to finish
computes the per-task means and the weighted total (static weights, or uncertainty
``c_i exp(-s_i) L_i + 0.5 s_i``).

Backward. Each tile recomputes its gradient from the predictions (cross entropy from
the saved log-sum-exp) and writes it once, scaled by
``(dtotal * w_i + dper_task_i) / (labelled count * row width)``. Bytes: predictions read
twice, gradients written once; nothing of the predictions' size is kept between the two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import triton_interpreting
from .multitask_loss_validate import KINDS, MultitaskArgs

INTERPRETED = triton_interpreting()
KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}  # cross_entropy 0, bce 1, mse 2, l1 3, huber 4
TILE_ELEMENTS = 4096  # rows * columns per tile
MAX_BLOCK_C = 4096


@triton.jit
def _ce_forward_tile(pred, target, mask, lse_out, rows, row_ok, n_cols, ignore_index,
                     HAS_MASK: tl.constexpr, BLOCK_C: tl.constexpr):
    """Cross entropy of rows ``rows`` ``[BLOCK_R]``: (sum of row losses, labelled count); stores the lse."""
    labelled = row_ok
    if HAS_MASK:
        labelled = labelled & (tl.load(mask + rows, mask=row_ok, other=0) != 0)
    classes = tl.load(target + rows, mask=row_ok, other=ignore_index)
    labelled = labelled & (classes != ignore_index)
    row_max = tl.full(rows.shape, float("-inf"), tl.float32)
    row_sum = tl.zeros(rows.shape, tl.float32)
    for start in range(0, n_cols, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        col_ok = cols < n_cols
        x = tl.load(pred + rows[:, None] * n_cols + cols[None, :], mask=labelled[:, None] & col_ok[None, :],
                    other=0.0).to(tl.float32)
        x = tl.where(col_ok[None, :], x, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(x, axis=1))
        row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max[:, None]), axis=1)
        row_max = new_max
    lse = row_max + tl.log(row_sum)
    tl.store(lse_out + rows, lse, mask=row_ok)
    picked = tl.load(pred + rows * n_cols + classes, mask=labelled, other=0.0).to(tl.float32)
    losses = tl.where(labelled, lse - picked, 0.0)
    return tl.sum(losses, axis=0), tl.sum(labelled.to(tl.int32), axis=0)


@triton.jit
def _elementwise_terms(x, y, KIND: tl.constexpr):
    if KIND == 1:  # bce with logits, stable form
        return tl.maximum(x, 0.0) - x * y + tl.log(1.0 + tl.exp(-tl.abs(x)))
    d = x - y
    if KIND == 2:
        return d * d
    if KIND == 3:
        return tl.abs(d)
    return tl.where(tl.abs(d) < 1.0, 0.5 * d * d, tl.abs(d) - 0.5)


@triton.jit
def _elementwise_derivative(x, y, KIND: tl.constexpr):
    if KIND == 1:  # sigmoid(x) - y, without overflowing exp
        e = tl.exp(-tl.abs(x))
        return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)) - y
    d = x - y
    if KIND == 2:
        return 2.0 * d
    if KIND == 3:
        return tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    return tl.minimum(tl.maximum(d, -1.0), 1.0)


@triton.jit
def _labelled_rows(mask, rows, row_ok, HAS_MASK: tl.constexpr):
    if HAS_MASK:
        return row_ok & (tl.load(mask + rows, mask=row_ok, other=0) != 0)
    return row_ok


@triton.jit
def _elementwise_forward_tile(pred, target, mask, rows, row_ok, n_cols, KIND: tl.constexpr,
                              HAS_MASK: tl.constexpr, BLOCK_C: tl.constexpr):
    labelled = _labelled_rows(mask, rows, row_ok, HAS_MASK)
    total = tl.zeros(rows.shape, tl.float32)
    for start in range(0, n_cols, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        ok = labelled[:, None] & (cols < n_cols)[None, :]
        offsets = rows[:, None] * n_cols + cols[None, :]
        x = tl.load(pred + offsets, mask=ok, other=0.0).to(tl.float32)
        y = tl.load(target + offsets, mask=ok, other=0.0).to(tl.float32)
        total += tl.sum(tl.where(ok, _elementwise_terms(x, y, KIND), 0.0), axis=1)
    return tl.sum(total, axis=0), tl.sum(labelled.to(tl.int32), axis=0)


@triton.jit
def _forward_kernel(preds, targets, masks, lse, batch, width, lse_offsets, starts,
                    sums, counts, ticket, weights, log_vars, row_widths, out, total_programs, ignore_index,
                    NUM_TASKS: tl.constexpr, KIND: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_C: tl.constexpr, HAS_LOG_VARS: tl.constexpr, T_PAD: tl.constexpr):
    pid = tl.program_id(0)
    for t in tl.static_range(NUM_TASKS):
        if (pid >= starts[t]) & (pid < starts[t + 1]):
            rows = (pid - starts[t]) * BLOCK_R[t] + tl.arange(0, BLOCK_R[t])
            row_ok = rows < batch[t]
            if KIND[t] == 0:
                loss_sum, count = _ce_forward_tile(preds[t], targets[t], masks[t], lse + lse_offsets[t], rows, row_ok,
                                                   width[t], ignore_index, HAS_MASK[t], BLOCK_C[t])
            else:
                loss_sum, count = _elementwise_forward_tile(preds[t], targets[t], masks[t], rows, row_ok, width[t],
                                                            KIND[t], HAS_MASK[t], BLOCK_C[t])
            tl.atomic_add(sums + t, loss_sum)
            tl.atomic_add(counts + t, count)
    # The last program to finish turns the sums into per-task means and the weighted total.
    if tl.atomic_add(ticket, 1) == total_programs - 1:
        tasks = tl.arange(0, T_PAD)
        ok = tasks < NUM_TASKS
        task_sums = tl.atomic_add(sums + tasks, tl.zeros([T_PAD], tl.float32), mask=ok)  # coherent reads
        task_counts = tl.atomic_add(counts + tasks, tl.zeros([T_PAD], tl.int32), mask=ok).to(tl.float32)
        per_row = tl.load(row_widths + tasks, mask=ok, other=1.0)
        per_task = tl.where(ok, task_sums / tl.maximum(task_counts * per_row, 1.0), 0.0)
        w = tl.load(weights + tasks, mask=ok, other=0.0)
        if HAS_LOG_VARS:
            s = tl.load(log_vars + tasks, mask=ok, other=0.0)
            terms = w * tl.exp(-s) * per_task + 0.5 * s
        else:
            terms = w * per_task
        tl.store(out + 1 + tasks, per_task, mask=ok)
        tl.store(out, tl.sum(tl.where(ok, terms, 0.0), axis=0))


@triton.jit
def _backward_kernel(preds, targets, masks, grads, lse, batch, width, lse_offsets, starts,
                     counts, weights, log_vars, row_widths, grad_out, ignore_index,
                     NUM_TASKS: tl.constexpr, KIND: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_C: tl.constexpr, HAS_LOG_VARS: tl.constexpr):
    pid = tl.program_id(0)
    for t in tl.static_range(NUM_TASKS):
        if (pid >= starts[t]) & (pid < starts[t + 1]):
            w = tl.load(weights + t)
            if HAS_LOG_VARS:
                w = w * tl.exp(-tl.load(log_vars + t))
            denominator = tl.maximum(tl.load(counts + t).to(tl.float32) * tl.load(row_widths + t), 1.0)
            scale = (tl.load(grad_out) * w + tl.load(grad_out + 1 + t)) / denominator
            rows = (pid - starts[t]) * BLOCK_R[t] + tl.arange(0, BLOCK_R[t])
            row_ok = rows < batch[t]
            labelled = _labelled_rows(masks[t], rows, row_ok, HAS_MASK[t])
            n_cols = width[t]
            if KIND[t] == 0:
                classes = tl.load(targets[t] + rows, mask=row_ok, other=ignore_index)
                labelled = labelled & (classes != ignore_index)
                row_lse = tl.load(lse + lse_offsets[t] + rows, mask=labelled, other=0.0)
            for start in range(0, n_cols, BLOCK_C[t]):
                cols = start + tl.arange(0, BLOCK_C[t])
                col_ok = (cols < n_cols)[None, :]
                ok = labelled[:, None] & col_ok
                offsets = rows[:, None] * n_cols + cols[None, :]
                x = tl.load(preds[t] + offsets, mask=ok, other=0.0).to(tl.float32)
                if KIND[t] == 0:
                    d = tl.exp(x - row_lse[:, None]) - tl.where(cols[None, :] == classes[:, None], 1.0, 0.0)
                else:
                    y = tl.load(targets[t] + offsets, mask=ok, other=0.0).to(tl.float32)
                    d = _elementwise_derivative(x, y, KIND[t])
                g = tl.where(ok, d * scale, 0.0)
                tl.store(grads[t] + offsets, g.to(grads[t].dtype.element_ty), mask=row_ok[:, None] & col_ok)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


class _Plan:
    """Launch layout of one call: per-task tile sizes, program ranges and the saved-lse offsets."""

    def __init__(self, a: MultitaskArgs):
        self.kind = tuple(KIND_CODES[k] for k in a.kinds)
        self.batch = tuple(p.shape[0] for p in a.preds)
        self.width = tuple(1 if p.dim() == 1 else p.shape[1] for p in a.preds)
        self.has_mask = tuple(m is not None for m in a.masks)
        self.block_c = tuple(min(_next_power_of_2(w), MAX_BLOCK_C) for w in self.width)
        self.block_r = tuple(min(max(1, TILE_ELEMENTS // c), _next_power_of_2(b)) for c, b in zip(self.block_c, self.batch))
        starts = [0]
        for b, r in zip(self.batch, self.block_r):
            starts.append(starts[-1] + triton.cdiv(b, r))
        self.starts = tuple(starts)
        offsets, total = [], 0
        for kind, b in zip(self.kind, self.batch):
            offsets.append(total)
            total += b if kind == 0 else 0
        self.lse_offsets, self.lse_rows = tuple(offsets), max(total, 1)
        self.row_widths = [1.0 if k == 0 else float(w) for k, w in zip(self.kind, self.width)]
        self.num_warps = 8 if max(r * c for r, c in zip(self.block_r, self.block_c)) >= 4096 else 4

    def constexprs(self, has_log_vars: bool) -> dict:
        return dict(NUM_TASKS=len(self.kind), KIND=self.kind, HAS_MASK=self.has_mask, BLOCK_R=self.block_r,
                    BLOCK_C=self.block_c, HAS_LOG_VARS=has_log_vars, num_warps=self.num_warps)


class _FusedMultitaskLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: MultitaskArgs, log_vars: torch.Tensor | None, *preds: torch.Tensor):
        plan, device = _Plan(a), preds[0].device
        preds = tuple(p.contiguous() for p in preds)
        targets = tuple(t.contiguous() for t in a.targets)
        masks = tuple(p if m is None else m.contiguous() for p, m in zip(preds, a.masks))  # unused when no mask
        weights = a.task_weights.float().contiguous()
        s = (log_vars.detach().float() if log_vars is not None else weights).contiguous()
        row_widths = torch.tensor(plan.row_widths, dtype=torch.float32, device=device)
        lse = torch.empty(plan.lse_rows, dtype=torch.float32, device=device)
        sums = torch.zeros(len(preds), dtype=torch.float32, device=device)
        counts = torch.zeros(len(preds), dtype=torch.int32, device=device)
        ticket = torch.zeros(1, dtype=torch.int32, device=device)
        out = torch.zeros(1 + len(preds), dtype=torch.float32, device=device)
        _forward_kernel[(plan.starts[-1],)](
            preds, targets, masks, lse, plan.batch, plan.width, plan.lse_offsets, plan.starts,
            sums, counts, ticket, weights, s, row_widths, out, plan.starts[-1], a.ignore_index,
            T_PAD=_next_power_of_2(len(preds)), **plan.constexprs(log_vars is not None))
        ctx.plan, ctx.targets, ctx.masks, ctx.ignore_index = plan, targets, masks, a.ignore_index
        ctx.has_log_vars = log_vars is not None
        ctx.log_vars_dtype = None if log_vars is None else log_vars.dtype
        ctx.save_for_backward(lse, counts, weights, s, row_widths, out, *preds)
        return out[0].clone(), out[1:].clone()

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor | None, grad_per_task: torch.Tensor | None):
        lse, counts, weights, s, row_widths, out, *preds = ctx.saved_tensors
        plan, device = ctx.plan, lse.device
        grad_total = torch.zeros((), device=device) if grad_total is None else grad_total.float()
        grad_per_task = torch.zeros(len(preds), device=device) if grad_per_task is None else grad_per_task.float()
        grad_out = torch.cat([grad_total.reshape(1), grad_per_task]).contiguous()
        grads = tuple(torch.empty_like(p) for p in preds)
        _backward_kernel[(plan.starts[-1],)](
            tuple(preds), ctx.targets, ctx.masks, grads, lse, plan.batch, plan.width, plan.lse_offsets, plan.starts,
            counts, weights, s, row_widths, grad_out, ctx.ignore_index, **plan.constexprs(ctx.has_log_vars))
        grad_s = None
        if ctx.has_log_vars:  # d/ds_i of c_i exp(-s_i) L_i + 0.5 s_i
            grad_s = (grad_total * (0.5 - weights * torch.exp(-s) * out[1:])).to(ctx.log_vars_dtype)
        return (None, grad_s, *grads)


def multitask_loss_triton(a: MultitaskArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted total ``[]`` and per-task losses ``[T]`` (float32) from the fused kernels."""
    if a.preds[0].device.type != "cuda" and not INTERPRETED:
        raise ValueError("the Triton multitask loss was imported without TRITON_INTERPRET=1 and cannot run on "
                         f"{a.preds[0].device} tensors")
    if sum(p.shape[0] for p in a.preds) == 0:
        from .multitask_loss_torch import multitask_loss_torch

        return multitask_loss_torch(a)
    return _FusedMultitaskLoss.apply(a, a.log_vars, *a.preds)
