"""Fused cross-modal attention in Triton: forward and backward.

Imported lazily by :mod:`mtmm_kernels.attention` (this module imports triton).

Layout: ``q`` ``[B, H, Lq, D]``, ``k``/``v`` ``[B, H, Lk, D]``, any strides. One
program handles one block of rows of one (batch, head) pair; the head dim is
padded to ``BLOCK_D`` (a power of two >= 16) by masked loads.

Key validity per sample ``b``: key ``j`` attends when ``j < kv_len[b]`` and, for a
bool mask, ``mask[b, j]``. For a mask, ``kv_len[b]`` is one past its last True
entry, so key blocks past it are skipped in both directions, as for lengths.

Launches: forward (1); backward = ``Delta = rowsum(O * dO)`` (1) + one kernel whose
first programs each own a key block (dK, dV, looping over query blocks) and whose
other programs each own a query block (dQ, looping over key blocks) (1). No
atomics, no ``[Lq, Lk]`` buffer: the extra memory is the ``[B, H, Lq]``
log-sum-exp and Delta.

Softmax in base 2: ``scale * log2(e)`` is folded into the scores, and the stored
log-sum-exp is ``m + log2(l)`` (``-inf`` for a sample without valid keys).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ._backend import triton_interpreting

LOG2E = 1.4426950408889634
#: Fixed at import: jit functions below are built interpreted or compiled once.
INTERPRETED = triton_interpreting()


# ----------------------------------------------------------------------------- autotuning


def _configs(backward: bool) -> list[triton.Config]:
    """Candidate block sizes; a single one under the interpreter (no benchmarking there)."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    if backward:
        shapes = [(32, 32, 4, 2), (32, 64, 4, 2), (64, 64, 4, 2), (64, 64, 8, 3), (64, 128, 8, 2), (128, 64, 8, 2),
                  (16, 32, 4, 2)]
    else:
        shapes = [(16, 32, 4, 2), (32, 64, 4, 3), (64, 32, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3),
                  (128, 128, 8, 2), (128, 32, 4, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop blocks much larger than the (bucketed) lengths: 128-row tiles for 32 queries waste work."""
    lq, lk = named_args["LQ_BUCKET"], named_args["LK_BUCKET"]
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, lq) and c.kwargs["BLOCK_N"] <= max(32, lk)]
    return kept or configs[:1]


def _bucket(n: int) -> int:
    """Autotune key for a length: the next power of two, capped, so new lengths rarely retune."""
    return min(triton.next_power_of_2(n), 4096)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
    """``a @ b`` accumulated in float32; ``DOT_FP32`` upcasts the operands first (the
    interpreter's ``tl.dot`` mishandles bfloat16)."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _key_valid(MASK, stride_mb, stride_mn, b, cols, kv_len, HAS_MASK: tl.constexpr):
    """Bool ``[BLOCK_N]``: which of the key positions ``cols`` sample ``b`` attends to."""
    valid = cols < kv_len
    if HAS_MASK:
        valid = valid & (tl.load(MASK + b * stride_mb + cols * stride_mn, mask=valid, other=0) != 0)
    return valid


@triton.jit
def _sample_kv_len(KV_LEN, b, Lk, HAS_LENGTHS: tl.constexpr):
    """Number of leading key positions worth visiting for sample ``b``."""
    if HAS_LENGTHS:
        return tl.load(KV_LEN + b)
    return Lk


@triton.autotune(
    configs=_configs(backward=False),
    key=["LQ_BUCKET", "LK_BUCKET", "BLOCK_D", "HAS_LENGTHS", "HAS_MASK"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _attn_fwd(
    Q, K, V, OUT, LSE, KV_LEN, MASK,
    sm_scale_log2,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mb, stride_mn,
    H, Lq, Lk, D,
    LQ_BUCKET, LK_BUCKET,
    HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid ``(cdiv(Lq, BLOCK_M), B * H)``: ``O`` ``[BLOCK_M, D]`` and ``LSE`` ``[BLOCK_M]`` of one row block."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # 64-bit offsets: b * stride may exceed 2**31
    h = (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < Lq
    d_ok = offs_d < D

    q_ptrs = Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    kv_len = _sample_kv_len(KV_LEN, b, Lk, HAS_LENGTHS)

    # Finite start for the running max: a block whose keys are all masked leaves it
    # unchanged and contributes exp2(-inf) = 0, never inf - inf.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, kv_len, BLOCK_N):  # blocks past kv_len are never visited
        cols = start_n + offs_n
        valid = _key_valid(MASK, stride_mb, stride_mn, b, cols, kv_len, HAS_MASK)
        kv_mask = valid[:, None] & d_ok[None, :]  # masked keys are never read (NaN there is harmless)
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)

        s = _dot(q, tl.trans(k), PRECISION, DOT_FP32) * sm_scale_log2  # [BLOCK_M, BLOCK_N]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, DOT_FP32)
        m_i = m_new

    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    acc = acc / l_safe[:, None]  # rows of a sample without keys: 0 / 1 = 0
    lse = tl.where(has_key, m_i + tl.math.log2(l_safe), float("-inf"))
    o_ptrs = OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh.to(tl.int64) * Lq + rows, lse, mask=row_ok)


@triton.jit
def _attn_bwd_delta(
    OUT, DO, DELTA,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    H, Lq, D,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Grid ``(cdiv(Lq, BLOCK_M), B * H)``: ``Delta[row] = sum_d O[row, d] * dO[row, d]`` in float32."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # 64-bit offsets: b * stride may exceed 2**31
    h = (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows < Lq)[:, None] & (offs_d < D)[None, :]
    o = tl.load(OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :] * stride_od,
                mask=mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * Lq + rows, delta, mask=rows < Lq)


@triton.jit
def _bwd_dkdv_block(
    q_base, k_base, v_base, do_base, dk_base, dv_base, lse_base, delta_base, MASK,
    stride_qm, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_dom, stride_dod, stride_mb, stride_mn,
    b, start_n, kv_len, Lq, Lk, D, sm_scale, sm_scale_log2,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK, dV ``[BLOCK_N, D]`` of the keys ``start_n + [0, BLOCK_N)``, looping over all query
    blocks (none when the block lies past ``kv_len``: its gradients are 0)."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    cols = start_n + tl.arange(0, BLOCK_N)
    valid = _key_valid(MASK, stride_mb, stride_mn, b, cols, kv_len, HAS_MASK)
    kv_mask = valid[:, None] & d_ok[None, :]
    k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
    v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    q_end = tl.where(start_n < kv_len, Lq, 0)
    for start_m in range(0, q_end, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < Lq
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
        do = tl.load(do_base + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
        lse = tl.load(lse_base + rows, mask=row_ok, other=0.0)
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)

        s_t = _dot(k, tl.trans(q), PRECISION, DOT_FP32) * sm_scale_log2  # [BLOCK_N, BLOCK_M]
        p_t = tl.where(valid[:, None] & row_ok[None, :], tl.math.exp2(s_t - lse[None, :]), 0.0)
        dv += _dot(p_t.to(do.dtype), do, PRECISION, DOT_FP32)
        dp_t = _dot(v, tl.trans(do), PRECISION, DOT_FP32)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, PRECISION, DOT_FP32)
    out = cols[:, None] * D + offs_d[None, :]
    out_mask = (cols < Lk)[:, None] & d_ok[None, :]  # every key row; masked keys get 0
    tl.store(dk_base + out, (dk * sm_scale).to(dk_base.dtype.element_ty), mask=out_mask)
    tl.store(dv_base + out, dv.to(dv_base.dtype.element_ty), mask=out_mask)


@triton.jit
def _bwd_dq_block(
    q_base, k_base, v_base, do_base, dq_base, lse_base, delta_base, MASK,
    stride_qm, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_dom, stride_dod, stride_mb, stride_mn,
    b, start_m, kv_len, Lq, D, sm_scale, sm_scale_log2,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ ``[BLOCK_M, D]`` of the queries ``start_m + [0, BLOCK_M)``, looping over the key blocks below ``kv_len``."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < Lq
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_base + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
    do = tl.load(do_base + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
    lse = tl.load(lse_base + rows, mask=row_ok, other=0.0)
    delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, kv_len, BLOCK_N):
        cols = start_n + offs_n
        valid = _key_valid(MASK, stride_mb, stride_mn, b, cols, kv_len, HAS_MASK)
        kv_mask = valid[:, None] & d_ok[None, :]
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)

        s = _dot(q, tl.trans(k), PRECISION, DOT_FP32) * sm_scale_log2  # [BLOCK_M, BLOCK_N]
        p = tl.where(valid[None, :], tl.math.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), PRECISION, DOT_FP32)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, PRECISION, DOT_FP32)
    out = rows[:, None] * D + offs_d[None, :]
    tl.store(dq_base + out, (dq * sm_scale).to(dq_base.dtype.element_ty), mask=q_mask)


@triton.autotune(
    configs=_configs(backward=True),
    key=["LQ_BUCKET", "LK_BUCKET", "BLOCK_D", "HAS_LENGTHS", "HAS_MASK"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _attn_bwd(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA, KV_LEN, MASK,
    sm_scale, sm_scale_log2,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_mb, stride_mn,
    H, Lq, Lk, D,
    LQ_BUCKET, LK_BUCKET,
    HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid ``(cdiv(Lk, BLOCK_N) + cdiv(Lq, BLOCK_M), B * H)``.

    Programs ``pid < cdiv(Lk, BLOCK_N)`` write dK, dV of one key block; the others write
    dQ of one query block. ``DQ``, ``DK``, ``DV`` are contiguous ``[B, H, L, D]``. With
    ``P = exp2(S * scale * log2e - LSE)``: ``dV = P^T dO``, ``dS = P * (dO V^T - Delta)``,
    ``dK = scale * dS^T Q``, ``dQ = scale * dS K``.
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: b * stride may exceed 2**31
    b = bh // H
    h = bh % H
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh
    kv_len = _sample_kv_len(KV_LEN, b, Lk, HAS_LENGTHS)
    n_kv_blocks = tl.cdiv(Lk, BLOCK_N)
    if pid < n_kv_blocks:
        _bwd_dkdv_block(
            q_base, k_base, v_base, do_base, DK + bh * Lk * D, DV + bh * Lk * D, LSE + bh * Lq, DELTA + bh * Lq, MASK,
            stride_qm, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_dom, stride_dod,
            stride_mb, stride_mn,
            b, pid * BLOCK_N, kv_len, Lq, Lk, D, sm_scale, sm_scale_log2,
            HAS_MASK, PRECISION, DOT_FP32, BLOCK_D, BLOCK_M, BLOCK_N,
        )
    else:
        _bwd_dq_block(
            q_base, k_base, v_base, do_base, DQ + bh * Lq * D, LSE + bh * Lq, DELTA + bh * Lq, MASK,
            stride_qm, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_dom, stride_dod,
            stride_mb, stride_mn,
            b, (pid - n_kv_blocks) * BLOCK_M, kv_len, Lq, D, sm_scale, sm_scale_log2,
            HAS_MASK, PRECISION, DOT_FP32, BLOCK_D, BLOCK_M, BLOCK_N,
        )


# ----------------------------------------------------------------------------- host side


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())  # type: ignore[return-value]


def _precision(dtype: torch.dtype) -> str:
    """``tl.dot`` precision matching PyTorch's: TF32 for float32 only when torch allows it."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not INTERPRETED:
        return "tf32"
    return "ieee"


def _device_guard(t: torch.Tensor):
    """Make ``t``'s GPU current while launching (no-op on CPU under the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _forward(q, k, v, kv_len, mask, scale):
    """Launch the forward kernel: returns ``O`` ``[B, H, Lq, D]`` and base-2 ``LSE`` ``[B, H, Lq]`` float32."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    o = torch.empty((B, H, Lq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Lq), dtype=torch.float32, device=q.device)
    mask_arg, stride_mb, stride_mn = (mask, *mask.stride()) if mask is not None else (q, 0, 0)
    grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
    with _device_guard(q):
        _attn_fwd[grid](
            q, k, v, o, lse, kv_len if kv_len is not None else q, mask_arg,
            scale * LOG2E,
            *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            stride_mb, stride_mn,
            H, Lq, Lk, D,
            _bucket(Lq), _bucket(Lk),
            HAS_LENGTHS=kv_len is not None, HAS_MASK=mask is not None, PRECISION=_precision(q.dtype),
            DOT_FP32=INTERPRETED and q.dtype == torch.bfloat16,
            BLOCK_D=max(16, triton.next_power_of_2(D)),
        )
    return o, lse


def _backward(do, q, k, v, o, lse, kv_len, mask, scale):
    """Launch Delta and the fused backward kernel: returns ``dq, dk, dv`` (contiguous)."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    block_d = max(16, triton.next_power_of_2(D))
    delta = torch.empty((B, H, Lq), dtype=torch.float32, device=q.device)
    dq = torch.empty((B, H, Lq, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, Lk, D), dtype=k.dtype, device=q.device)
    dv = torch.empty((B, H, Lk, D), dtype=v.dtype, device=q.device)
    mask_arg, stride_mb, stride_mn = (mask, *mask.stride()) if mask is not None else (q, 0, 0)
    delta_block = 64 if not INTERPRETED else 32
    grid = lambda meta: (triton.cdiv(Lk, meta["BLOCK_N"]) + triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
    with _device_guard(q):
        _attn_bwd_delta[(triton.cdiv(Lq, delta_block), B * H)](
            o, do, delta, *_strides(o), *_strides(do), H, Lq, D, BLOCK_D=block_d, BLOCK_M=delta_block,
        )
        _attn_bwd[grid](
            q, k, v, do, dq, dk, dv, lse, delta, kv_len if kv_len is not None else q, mask_arg,
            scale, scale * LOG2E,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            stride_mb, stride_mn,
            H, Lq, Lk, D,
            _bucket(Lq), _bucket(Lk),
            HAS_LENGTHS=kv_len is not None, HAS_MASK=mask is not None, PRECISION=_precision(q.dtype),
            DOT_FP32=INTERPRETED and q.dtype == torch.bfloat16,
            BLOCK_D=block_d,
        )
    return dq, dk, dv


class _CrossModalAttentionFn(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, O and the log-sum-exp; backward recomputes the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, kv_len, mask, scale):  # type: ignore[override]
        o, lse = _forward(q, k, v, kv_len, mask, scale)
        ctx.save_for_backward(q, k, v, o, lse, kv_len, mask)
        ctx.scale = scale
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):  # type: ignore[override]
        q, k, v, o, lse, kv_len, mask = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, o, lse, kv_len, mask, ctx.scale)
        return dq, dk, dv, None, None, None


def attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """``q`` ``[B, H, Lq, D]``, ``k``/``v`` ``[B, H, Lk, D]`` -> ``[B, H, Lq, D]`` (arguments pre-validated).

    ``key_lengths`` ``[B]`` becomes int32 ``kv_len``; a bool ``key_padding_mask`` ``[B, Lk]``
    is passed as uint8 together with ``kv_len`` = one past its last True entry.
    """
    if q.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"backend='triton' cannot run on {q.device}: mtmm_kernels.attention_triton was imported "
            "without TRITON_INTERPRET=1"
        )
    Lk = k.shape[2]
    mask = None
    kv_len = None
    if key_lengths is not None:
        kv_len = key_lengths.to(torch.int32)
    elif key_padding_mask is not None:
        mask = key_padding_mask.view(torch.uint8)
        positions = torch.arange(1, Lk + 1, device=q.device, dtype=torch.int32)
        kv_len = torch.where(key_padding_mask, positions, 0).amax(dim=1).to(torch.int32)
    if q.shape[0] == 0 or q.shape[1] == 0 or q.shape[2] == 0:
        return q * 0  # empty: nothing to launch
    return _CrossModalAttentionFn.apply(q, k, v, kv_len, mask, scale)

