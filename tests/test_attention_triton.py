"""The fused Triton kernel against the float64 reference, forward and gradients.

On a machine without CUDA the kernel runs under Triton's interpreter: tests/conftest.py
sets ``TRITON_INTERPRET=1`` before ``mtmm_kernels.attention_triton`` (whose jit
functions read it once) is first imported. Interpreted kernels are slow, so the
cases use small ``B * H``.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if sys.platform == "linux":
    import triton  # noqa: F401  (a required dependency on Linux: fail loudly if it is missing)
else:
    pytest.importorskip("triton")
if not torch.cuda.is_available():
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets TRITON_INTERPRET=1 without CUDA"

from mtmm_kernels import cross_modal_attention  # noqa: E402
from mtmm_kernels._testing import (  # noqa: E402
    assert_close_to_reference,
    make_lengths,
    make_mask,
    make_qkv,
    reference_and_grads,
)
from mtmm_kernels.attention_triton import _bucket  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16


def _masking(kind: str, B: int, Lk: int) -> dict:
    if kind == "lengths":
        return {"key_lengths": make_lengths(B, Lk, DEVICE)}
    if kind == "mask":
        return {"key_padding_mask": make_mask(B, Lk, DEVICE)}
    return {}


def _check(B: int, H: int, Lq: int, Lk: int, D: int, dtype: torch.dtype, kind: str) -> None:
    q, k, v = make_qkv(B, H, Lq, Lk, D, dtype, DEVICE)
    kwargs = _masking(kind, B, Lk)
    out = cross_modal_attention(q, k, v, backend="triton", **kwargs)
    assert out.shape == (B, H, Lq, D) and out.dtype == dtype
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref, ref_grads = reference_and_grads(q, k, v, dout, **kwargs)
    assert_close_to_reference(out, ref, dtype, "out")
    for name, g, g_ref in zip("qkv", grads, ref_grads):
        assert g.dtype == dtype
        assert_close_to_reference(g, g_ref, dtype, f"d{name}")


@pytest.mark.parametrize(
    "B,H,Lq,Lk,D,dtype,kind",
    [
        (2, 1, 1, 1, 16, f32, "lengths"),
        (2, 1, 1, 1, 16, bf16, "mask"),
        (3, 1, 33, 65, 24, f32, "lengths"),
        (3, 1, 33, 65, 24, f32, "mask"),
        (2, 1, 33, 65, 16, f16, "lengths"),
        (2, 1, 33, 65, 64, bf16, "mask"),
        (2, 1, 77, 257, 16, f32, "none"),
        (2, 1, 77, 257, 64, f16, "mask"),
        (2, 1, 77, 257, 24, bf16, "lengths"),
        (2, 1, 128, 577, 128, f32, "lengths"),
        (1, 2, 5, 40, 128, f16, "none"),
        (1, 1, 17, 9, 100, bf16, "none"),
    ],
)
def test_triton_matches_reference(B, H, Lq, Lk, D, dtype, kind) -> None:
    _check(B, H, Lq, Lk, D, dtype, kind)


def test_empty_samples_give_exact_zeros() -> None:
    q, k, v = make_qkv(3, 1, 9, 20, 16, f32, DEVICE)
    mask = torch.rand(3, 20, device=DEVICE) < 0.5
    mask[1] = False
    for kwargs in ({"key_padding_mask": mask}, {"key_lengths": torch.tensor([20, 0, 3], device=DEVICE)}):
        out = cross_modal_attention(q, k, v, backend="triton", **kwargs)
        grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
        for t in (out, *grads):
            assert torch.isfinite(t).all()
            assert torch.equal(t[1], torch.zeros_like(t[1]))


def test_masked_keys_are_never_read() -> None:
    """NaN in padded keys/values must not leak: those positions are not loaded at all."""
    q, k, v = make_qkv(2, 1, 6, 40, 16, f32, DEVICE)
    lengths = torch.tensor([7, 33], device=DEVICE)
    prefix = torch.arange(40, device=DEVICE)[None, :] < lengths[:, None]
    holes = prefix.clone()
    holes[0, 2] = False
    for mask, kwargs in ((prefix, {"key_lengths": lengths}), (holes, {"key_padding_mask": holes})):
        hidden = ~mask[:, None, :, None].expand_as(k)
        k_nan, v_nan = (t.detach().masked_fill(hidden, float("nan")).requires_grad_() for t in (k, v))
        out = cross_modal_attention(q, k_nan, v_nan, backend="triton", **kwargs)
        ref = cross_modal_attention(q, k, v, backend="torch", key_padding_mask=mask)
        assert_close_to_reference(out, ref.double(), f32, "out")
        dq, dk, dv = torch.autograd.grad(out, (q, k_nan, v_nan), torch.ones_like(out))
        assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
        assert not dk[hidden].any() and not dv[hidden].any()


def test_non_contiguous_inputs_and_gradient() -> None:
    B, H, Lq, Lk, D = 2, 2, 10, 21, 32
    q = torch.randn(B, Lq, H, D, device=DEVICE).transpose(1, 2).requires_grad_()
    kv = torch.randn(B, Lk, 2, H, D, device=DEVICE)
    k = kv[:, :, 0].transpose(1, 2).requires_grad_()
    v = kv[:, :, 1].transpose(1, 2).requires_grad_()
    lengths = torch.tensor([4, 21], device=DEVICE)
    out = cross_modal_attention(q, k, v, key_lengths=lengths, backend="triton")
    dout = torch.randn(B, Lq, H, D, device=DEVICE).transpose(1, 2)  # non-contiguous upstream gradient
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref, ref_grads = reference_and_grads(q, k, v, dout, key_lengths=lengths)
    assert_close_to_reference(out, ref, f32, "out")
    for name, g, g_ref in zip("qkv", grads, ref_grads):
        assert_close_to_reference(g, g_ref, f32, f"d{name}")


def test_auto_on_cpu_still_picks_torch() -> None:
    if DEVICE == "cuda":
        pytest.skip("CPU dispatch only")
    from mtmm_kernels import resolve_backend
    from mtmm_kernels._validate import validate_attention_args

    q, k, v = make_qkv(1, 1, 2, 3, 16, f32)
    assert resolve_backend("auto", validate_attention_args(q, k, v, None, None, None)) == "torch"


def test_autotune_key_is_bucketed() -> None:
    assert _bucket(1) == 1 and _bucket(49) == 64 and _bucket(257) == 512 and _bucket(577) == 1024
    assert {_bucket(n) for n in range(513, 1025)} == {1024}
    assert _bucket(100_000) == 4096


def test_autotune_key_holds_every_code_changing_argument_and_results_persist() -> None:
    """The compiled kernels (not the interpreter's): every constexpr but the tile sizes is in the
    autotune key (a new masking, precision or head dim retunes), the lengths enter only bucketed, the
    batch and head counts never (a new batch size reuses the tuned tile), and the tuning is written to
    Triton's cache (``cache_results``) where this Triton has it."""
    import inspect
    import json
    import subprocess
    import sys

    import triton

    code = (
        "import inspect, json\n"
        "import mtmm_kernels.attention_triton as a\n"
        "out = {}\n"
        "for name in ('_attn_fwd', '_attn_bwd'):\n"
        "    tuner = getattr(a, name)\n"
        "    params = inspect.signature(tuner.fn.fn).parameters\n"
        "    out[name] = {'keys': list(tuner.keys), 'cache': bool(tuner.cache_results), 'args': list(params),\n"
        "                 'constexprs': [n for n, p in params.items() if 'constexpr' in str(p.annotation)]}\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    persists = "cache_results" in inspect.signature(triton.autotune).parameters
    for name, info in found.items():
        keys, constexprs = set(info["keys"]), set(info["constexprs"])
        assert {"BLOCK_D", "HAS_LENGTHS", "HAS_MASK", "PRECISION", "DOT_FP32"} <= constexprs, name
        assert constexprs - {"BLOCK_M", "BLOCK_N"} <= keys, (name, constexprs - keys)
        assert keys <= set(info["args"]), name
        assert {"LQ_BUCKET", "LK_BUCKET"} <= keys and not keys & {"H", "Lq", "Lk", "D"}, name
        assert info["cache"] == persists, name
