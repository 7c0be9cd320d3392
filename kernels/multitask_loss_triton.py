"""Fused multitask loss in Triton: one forward launch for all tasks and the weighting, one backward launch.

Layout. Each task is cut into tiles of ``BLOCK_R`` rows; a launch grid is the
concatenation of its tasks' tiles, and ``starts[t]`` is task ``t``'s first program.
Task metadata travels as tuples: tensors (predictions, targets, masks, gradients) and
runtime ints (batch, row width), plus constexpr tuples (loss kind, mask present, tile
sizes, the task's index ``TASK_ID`` among all tasks), so the kernel is specialised once
per task configuration. Batch sizes and program offsets are not specialised on (a new
batch size reuses the compiled kernel unless a tile size changes: those follow the next
power of two of the batch).

Launches by tile shape. A kernel's register count is that of its most demanding branch, so
one launch for every task runs them all at the occupancy of the worst. What costs
registers is the tile's shape, not the loss kind: tiles of many short rows (2 to 255
columns) are addressed element by element; ``[B]`` tasks (one contiguous column) and long
rows (cross entropy over many classes) load vectors. The tasks are launched in two groups
(:func:`_group_key`), each compiled and sized (warps) on its own, and short-row tiles
hold 2048 elements instead of 4096: at most two launches forward and two backward (one
when every task falls in the same group). Measured with benchmarks/aot_check.py, sm_90a,
bfloat16: the single launch of six mixed tasks took 110 (forward) and 128 (backward)
registers per thread for every task; split, the long-row and ``[B]`` group takes 37 and
32 (full occupancy for the bandwidth-heavy cross entropy), the short-row group 77 and 76.

Forward. A tile reads its rows once (rows without a label are not read): cross entropy
streams the row in ``BLOCK_C`` chunks with an online log-sum-exp and saves it per row
(float32 ``[B]``); the other kinds sum their elementwise terms. Each tile adds its loss
sum and labelled count to per-task accumulators (atomics); the last tile to finish, over
all of the call's launches (one ticket counter), computes the per-task means and the weighted total (static weights, or uncertainty
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

from .multitask_loss_validate import KINDS, MultitaskArgs

KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}  # cross_entropy 0, bce 1, mse 2, l1 3, huber 4
TILE_ELEMENTS = 4096  # rows * columns per tile
NARROW_TILE_ELEMENTS = 2048  # the same for rows of 2 to 255 elements: halves their registers (see _narrow)
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


#: Runtime ints that follow the batch size: not specialised on (divisibility by 16 would compile a
#: new kernel for batch sizes that differ only in it).
_UNSPECIALISED = ["batch", "lse_offsets", "starts", "total_programs"]


@triton.jit(do_not_specialize=_UNSPECIALISED)
def _forward_kernel(preds, targets, masks, lse, batch, width, lse_offsets, starts,
                    sums, counts, ticket, weights, log_vars, row_widths, out, total_programs, ignore_index,
                    NUM_TASKS: tl.constexpr, KIND: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_C: tl.constexpr, HAS_LOG_VARS: tl.constexpr, TASK_ID: tl.constexpr, NUM_ALL: tl.constexpr,
                    T_PAD: tl.constexpr):
    """Grid ``(starts[NUM_TASKS],)``: the tiles of this launch's ``NUM_TASKS`` tasks (task ``t`` is
    ``TASK_ID[t]`` of the call's ``NUM_ALL``); ``total_programs`` counts the programs of every launch."""
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
            tl.atomic_add(sums + TASK_ID[t], loss_sum)
            tl.atomic_add(counts + TASK_ID[t], count)
    # The last program to finish (of every launch) turns the sums into per-task means and the weighted total.
    if tl.atomic_add(ticket, 1) == total_programs - 1:
        tasks = tl.arange(0, T_PAD)
        ok = tasks < NUM_ALL
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


@triton.jit(do_not_specialize=_UNSPECIALISED[:-1])
def _backward_kernel(preds, targets, masks, grads, lse, batch, width, lse_offsets, starts,
                     counts, weights, log_vars, row_widths, grad_out, ignore_index,
                     NUM_TASKS: tl.constexpr, KIND: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_C: tl.constexpr, HAS_LOG_VARS: tl.constexpr, TASK_ID: tl.constexpr,
                     NUM_ALL: tl.constexpr):
    """Grid ``(starts[NUM_TASKS],)``; tuples as in the forward (``NUM_ALL`` is unused here)."""
    pid = tl.program_id(0)
    for t in tl.static_range(NUM_TASKS):
        if (pid >= starts[t]) & (pid < starts[t + 1]):
            task = TASK_ID[t]
            w = tl.load(weights + task)
            if HAS_LOG_VARS:
                w = w * tl.exp(-tl.load(log_vars + task))
            denominator = tl.maximum(tl.load(counts + task).to(tl.float32) * tl.load(row_widths + task), 1.0)
            scale = (tl.load(grad_out) * w + tl.load(grad_out + 1 + task)) / denominator
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
    """Triton's, with 1 for an empty task (``n = 0``)."""
    return triton.next_power_of_2(max(n, 1))


def _narrow(width: int) -> bool:
    """Rows of 2 to 255 elements: tiles of many short rows, addressed element by element (no vector
    loads across rows), which take 100 to 155 registers per thread at 4096 elements per tile; a
    single column (``[B]``, contiguous) or long rows take 24 to 80 (benchmarks/aot_check.py)."""
    return 1 < width < 256


def _tile_elements(width: int) -> int:
    return NARROW_TILE_ELEMENTS if _narrow(width) else TILE_ELEMENTS


def _group_key(kind: int, width: int) -> bool:
    """Tasks with the same key share a launch: narrow rows apart from ``[B]`` and long rows, whatever the
    kind (the registers follow the tile's shape, not the loss: cross entropy over 32000 classes compiles
    to 32 registers, over 10 classes to 155)."""
    return _narrow(width)


def _num_warps(block_r: tuple[int, ...], block_c: tuple[int, ...]) -> int:
    return 8 if max(r * c for r, c in zip(block_r, block_c)) >= NARROW_TILE_ELEMENTS else 4


class _LaunchPlan:
    """One launch: the tasks ``task_ids`` (indices into the call's tasks), their tuples and grid."""

    def __init__(self, plan: "_Plan", task_ids: tuple[int, ...]):
        self.task_ids = task_ids
        self.batch = tuple(plan.batch[t] for t in task_ids)
        self.width = tuple(plan.width[t] for t in task_ids)
        self.lse_offsets = tuple(plan.lse_offsets[t] for t in task_ids)
        starts = [0]
        for t in task_ids:
            starts.append(starts[-1] + triton.cdiv(plan.batch[t], plan.block_r[t]))
        self.starts = tuple(starts)
        self.programs = starts[-1]
        self._constexprs = dict(
            NUM_TASKS=len(task_ids), KIND=tuple(plan.kind[t] for t in task_ids),
            HAS_MASK=tuple(plan.has_mask[t] for t in task_ids), BLOCK_R=tuple(plan.block_r[t] for t in task_ids),
            BLOCK_C=tuple(plan.block_c[t] for t in task_ids), TASK_ID=task_ids, NUM_ALL=len(plan.kind),
            num_warps=_num_warps(tuple(plan.block_r[t] for t in task_ids), tuple(plan.block_c[t] for t in task_ids)))

    def constexprs(self, has_log_vars: bool) -> dict:
        return dict(self._constexprs, HAS_LOG_VARS=has_log_vars)

    def select(self, values) -> tuple:
        """This launch's entries of a per-task sequence."""
        return tuple(values[t] for t in self.task_ids)


class _Plan:
    """Launch layout of one call: per-task tile sizes, the saved-lse offsets and :attr:`launches`, the
    launches by tile shape (:func:`_group_key`) that :func:`launch_forward` and :func:`launch_backward` run."""

    def __init__(self, a: MultitaskArgs):
        self.kind = tuple(KIND_CODES[k] for k in a.kinds)
        self.batch = tuple(p.shape[0] for p in a.preds)
        self.width = tuple(1 if p.dim() == 1 else p.shape[1] for p in a.preds)
        self.has_mask = tuple(m is not None for m in a.masks)
        self.block_c = tuple(min(_next_power_of_2(w), MAX_BLOCK_C) for w in self.width)
        self.block_r = tuple(min(max(1, _tile_elements(w) // c), _next_power_of_2(b))
                             for c, b, w in zip(self.block_c, self.batch, self.width))
        offsets, total = [], 0
        for kind, b in zip(self.kind, self.batch):
            offsets.append(total)
            total += b if kind == 0 else 0
        self.lse_offsets, self.lse_rows = tuple(offsets), max(total, 1)
        self.row_widths = [1.0 if k == 0 else float(w) for k, w in zip(self.kind, self.width)]
        groups: dict[bool, list[int]] = {}
        for t, (kind, width) in enumerate(zip(self.kind, self.width)):
            groups.setdefault(_group_key(kind, width), []).append(t)
        #: Launches in a fixed order (long rows and [B] first), empty ones left out (at least one launch).
        self.launches = [launch for launch in (_LaunchPlan(self, tuple(ids)) for _, ids in sorted(groups.items()))
                         if launch.programs > 0] or [_LaunchPlan(self, tuple(range(len(self.kind))))]
        self.total_programs = sum(launch.programs for launch in self.launches)


def launch_forward(plan: _Plan, preds, targets, masks, weights, log_vars, row_widths, ignore_index: int,
                   has_log_vars: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the forward launches. ``preds``, ``targets``: contiguous, one per task; ``masks``: contiguous
    bool ``[B]`` or any tensor where a task has no mask; ``weights``, ``log_vars`` (``weights`` again when
    there are none) and ``row_widths`` float32 ``[T]`` on the device.

    Returns ``out`` float32 ``[1 + T]`` (total, then the per-task losses), the per-row log-sum-exp
    ``[plan.lse_rows]`` and the labelled counts int32 ``[T]``.
    """
    device, T = preds[0].device, len(preds)
    lse = torch.empty(plan.lse_rows, dtype=torch.float32, device=device)
    sums = torch.zeros(T, dtype=torch.float32, device=device)
    counts = torch.zeros(T, dtype=torch.int32, device=device)
    ticket = torch.zeros(1, dtype=torch.int32, device=device)
    out = torch.zeros(1 + T, dtype=torch.float32, device=device)
    for launch in plan.launches:
        _forward_kernel[(launch.programs,)](
            launch.select(preds), launch.select(targets), launch.select(masks), lse, launch.batch, launch.width,
            launch.lse_offsets, launch.starts, sums, counts, ticket, weights, log_vars, row_widths, out,
            plan.total_programs, ignore_index, T_PAD=_next_power_of_2(T), **launch.constexprs(has_log_vars))
    return out, lse, counts


def launch_backward(plan: _Plan, preds, targets, masks, lse, counts, weights, log_vars, row_widths,
                    grad_out: torch.Tensor, ignore_index: int, has_log_vars: bool) -> tuple[torch.Tensor, ...]:
    """Run the backward launches: the gradient of every prediction (its shape and dtype). ``grad_out``
    float32 ``[1 + T]``: the upstream gradients of the total and of each per-task loss."""
    grads = tuple(torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in preds)
    for launch in plan.launches:
        _backward_kernel[(launch.programs,)](
            launch.select(preds), launch.select(targets), launch.select(masks), launch.select(grads), lse,
            launch.batch, launch.width, launch.lse_offsets, launch.starts, counts, weights, log_vars, row_widths,
            grad_out, ignore_index, **launch.constexprs(has_log_vars))
    return grads
