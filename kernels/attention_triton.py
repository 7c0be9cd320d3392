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
import inspect

import torch
import triton
import triton.language as tl

from ._backend import triton_interpreting

LOG2E = 1.4426950408889634
#: Fixed at import: jit functions below are built interpreted or compiled once.
INTERPRETED = triton_interpreting()


# ----------------------------------------------------------------------------- autotuning


#: Compute capability (major * 10 + minor) that configs are pruned for when the tensors are not on a GPU:
#: benchmarks/aot_check.py sets it to build, on a machine without one, what a given GPU would run.
AOT_CAPABILITY: int | None = None

#: Head dims (BLOCK_D) a candidate is kept for.
_ALL, _UPTO64, _UPTO32 = (16, 32, 64, 128), (16, 32, 64), (16, 32)

#: Autotune candidates ``(BLOCK_M, BLOCK_N, num_warps, num_stages, BLOCK_D values)`` per kernel,
#: architecture family and operand class, chosen with benchmarks/aot_check.py: none spills or
#: exceeds the per-block shared memory at the head dims it is kept for, with Triton 3.9 or 3.6
#: (the GPU machines'), and none sits at the 255-register ceiling there (docs/kernels.md,
#: "Checking the kernels without a GPU"). Spills appear and vanish irregularly with the head
#: dim, the masking and the Triton version (ptxas trading a few bytes of spill for occupancy),
#: hence head-dim lists rather than a rule.
#: "sm90" (Hopper and later) keeps BLOCK_M >= 64 (backward: BLOCK_N >= 64 too, the dK/dV dots
#: have BLOCK_N rows) so that the dots are warpgroup MMAs (wgmma: a warpgroup of 4 warps per 64
#: rows); the exception is TF32 backward at D = 128, where no such tile fits in registers.
#: "tf32": float32 operands with TF32 allowed, twice the registers and shared memory of 16-bit
#: ones per tile. "ieee": float32 without TF32: CUDA-core FMA dots, small tiles only.
_TABLE = {
    ("fwd", "sm90", "16bit"): [(64, 64, 4, 3, _ALL), (64, 128, 4, 3, _UPTO64), (64, 128, 8, 3, _UPTO64),
                               (128, 64, 8, 3, _ALL), (128, 128, 8, 2, _UPTO64), (128, 32, 8, 3, _ALL)],
    ("fwd", "sm80", "16bit"): [(16, 32, 4, 2, _ALL), (32, 64, 4, 3, _ALL), (64, 32, 4, 3, (16, 64, 128)),
                               (64, 64, 4, 3, _UPTO64), (64, 128, 8, 3, (16, 64, 128)), (128, 64, 8, 3, _UPTO64),
                               (128, 128, 8, 2, _UPTO32), (128, 32, 8, 3, _ALL)],
    ("bwd", "sm90", "16bit"): [(64, 64, 4, 2, _UPTO64), (64, 64, 8, 2, _ALL), (64, 128, 8, 2, _UPTO32)],
    ("bwd", "sm80", "16bit"): [(16, 32, 4, 2, _ALL), (32, 32, 4, 2, _ALL), (32, 64, 4, 2, _UPTO64),
                               (64, 32, 4, 2, (32, 64)), (64, 64, 4, 2, _UPTO32), (64, 64, 8, 2, _UPTO32)],
    ("fwd", "sm90", "tf32"): [(64, 32, 4, 2, _ALL), (64, 32, 4, 3, _ALL), (64, 64, 4, 2, _UPTO64),
                              (64, 64, 8, 2, _ALL), (128, 32, 8, 2, _ALL)],
    ("fwd", "sm80", "tf32"): [(16, 32, 4, 2, _ALL), (32, 32, 4, 2, _UPTO64), (64, 64, 8, 2, _UPTO64)],
    ("bwd", "sm90", "tf32"): [(16, 32, 4, 2, (128,)), (32, 32, 4, 2, (128,)), (64, 64, 4, 2, _UPTO32),
                              (64, 64, 8, 2, _UPTO64)],
    ("bwd", "sm80", "tf32"): [(16, 32, 4, 2, (16, 32, 128)), (32, 32, 4, 1, _ALL)],
    ("fwd", "sm90", "ieee"): [(16, 32, 8, 1, (128,)), (32, 16, 8, 1, (128,)), (16, 32, 4, 1, _UPTO64),
                              (16, 64, 4, 1, _UPTO32), (64, 32, 8, 1, (16, 64))],
    ("fwd", "sm80", "ieee"): [(16, 32, 4, 1, _ALL), (16, 64, 4, 1, _UPTO64), (32, 32, 8, 1, _UPTO64)],
    ("bwd", "sm90", "ieee"): [(16, 32, 8, 1, (16, 64, 128)), (32, 32, 8, 1, _UPTO64)],
    ("bwd", "sm80", "ieee"): [(16, 32, 4, 1, (16, 64, 128)), (32, 32, 8, 1, _UPTO64)],
}

#: The one config under the interpreter (no benchmarking there).
_INTERPRETER_CONFIG = (32, 32, 4, 1)


def _config(m: int, n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)


def _configs(backward: bool) -> list[triton.Config]:
    """Every candidate of a kernel, for every target (pruned per launch by :func:`_pruner`)."""
    if INTERPRETED:
        return [_config(*_INTERPRETER_CONFIG)]
    kernel = "bwd" if backward else "fwd"
    shapes = dict.fromkeys(row[:4] for (k, _, _), rows in _TABLE.items() if k == kernel for row in rows)
    return [_config(*shape) for shape in shapes]


def _capability(t: torch.Tensor) -> int | None:
    if t.is_cuda:
        major, minor = torch.cuda.get_device_capability(t.device)
        return 10 * major + minor
    return AOT_CAPABILITY


def _operand_class(dtype: torch.dtype, precision: str) -> str:
    if dtype == torch.float32:
        return "tf32" if precision == "tf32" else "ieee"
    return "16bit"


def _candidates(backward: bool, capability: int, dtype: torch.dtype, precision: str, block_d: int) -> set:
    family = "sm90" if capability >= 90 else "sm80"
    rows = _TABLE[("bwd" if backward else "fwd", family, _operand_class(dtype, precision))]
    return {row[:4] for row in rows if block_d in row[4]}


def _shape(c: triton.Config) -> tuple[int, int, int, int]:
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages


def _pruner(backward: bool):
    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        """The configs for this GPU, operand class and head dim (:data:`_TABLE`), then without blocks
        much larger than the (bucketed) lengths: 128-row tiles for 32 queries waste work."""
        q = named_args["Q"]
        capability = _capability(q)
        if capability is not None and not INTERPRETED:
            allowed = _candidates(backward, capability, q.dtype, kwargs["PRECISION"], kwargs["BLOCK_D"])
            configs = [c for c in configs if _shape(c) in allowed]
        lq, lk = named_args["LQ_BUCKET"], named_args["LK_BUCKET"]
        # Never below the smallest candidate tile (on sm90 BLOCK_M >= 64 even for 32 queries).
        lq = max(lq, 16, min(c.kwargs["BLOCK_M"] for c in configs))
        lk = max(lk, 32, min(c.kwargs["BLOCK_N"] for c in configs))
        kept = [c for c in configs if c.kwargs["BLOCK_M"] <= lq and c.kwargs["BLOCK_N"] <= lk]
        return kept or configs[:1]

    return prune


def _autotune(backward: bool):
    """``triton.autotune`` over :func:`_configs`. The key holds every argument that changes the compiled
    code or the best tile (the bucketed lengths, the padded head dim, the masking, the dot precision;
    Triton adds the tensors' dtypes), never the batch or head count. Results persist across processes
    in Triton's cache where this Triton has ``cache_results`` (3.2 and later)."""
    options = {}
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        options["cache_results"] = True
    return triton.autotune(
        configs=_configs(backward),
        key=["LQ_BUCKET", "LK_BUCKET", "BLOCK_D", "HAS_LENGTHS", "HAS_MASK", "PRECISION", "DOT_FP32"],
        prune_configs_by={"early_config_prune": _pruner(backward)},
        **options,
    )


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


@_autotune(backward=False)
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


@_autotune(backward=True)
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
