"""Cross-modal attention: PyTorch fallback against the float64 reference, dispatch, errors.

The Triton kernel has its own module (``test_attention_triton.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from mtmm_kernels import attention_reference, cross_modal_attention, resolve_backend
from mtmm_kernels._testing import (
    assert_close_to_reference,
    make_lengths,
    make_mask,
    make_qkv,
    reference_and_grads,
)
from mtmm_kernels._validate import validate_attention_args

SHAPES = [(1, 1), (77, 257), (33, 65), (128, 577)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _grads(out: torch.Tensor, dout: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, inputs, dout)


@pytest.mark.parametrize("Lq,Lk", SHAPES)
@pytest.mark.parametrize("D", [16, 24, 64, 128])
@pytest.mark.parametrize("masking", ["none", "lengths", "mask"])
def test_torch_forward_backward_float32(Lq: int, Lk: int, D: int, masking: str) -> None:
    B, H = 3, 2
    q, k, v = make_qkv(B, H, Lq, Lk, D, torch.float32)
    kwargs = {
        "none": {},
        "lengths": {"key_lengths": make_lengths(B, Lk)},
        "mask": {"key_padding_mask": make_mask(B, Lk)},
    }[masking]
    out = cross_modal_attention(q, k, v, backend="torch", **kwargs)
    assert out.shape == (B, H, Lq, D) and out.dtype == torch.float32
    dout = torch.randn_like(out)
    ref, ref_grads = reference_and_grads(q, k, v, dout, **kwargs)
    assert_close_to_reference(out, ref, torch.float32, "out")
    for name, g, g_ref in zip("qkv", _grads(out, dout, q, k, v), ref_grads):
        assert_close_to_reference(g, g_ref, torch.float32, f"d{name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq,Lk", [(1, 1), (33, 65)])
def test_torch_dtypes(dtype: torch.dtype, Lq: int, Lk: int) -> None:
    B, H, D = 3, 2, 32
    q, k, v = make_qkv(B, H, Lq, Lk, D, dtype)
    lengths = make_lengths(B, Lk)
    out = cross_modal_attention(q, k, v, key_lengths=lengths, backend="torch")
    assert out.dtype == dtype
    assert_close_to_reference(out, attention_reference(q, k, v, key_lengths=lengths), dtype, "out")


def test_empty_sample_gives_zero_output_and_gradients() -> None:
    q, k, v = make_qkv(2, 2, 5, 9, 16, torch.float32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1] = False
    for kwargs in ({"key_padding_mask": mask}, {"key_lengths": torch.tensor([9, 0])}):
        out = cross_modal_attention(q, k, v, backend="torch", **kwargs)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        dq, dk, dv = _grads(out, torch.randn_like(out), q, k, v)
        for g in (dq, dk, dv):
            assert torch.isfinite(g).all() and torch.equal(g[1], torch.zeros_like(g[1]))


def test_non_contiguous_inputs() -> None:
    B, H, Lq, Lk, D = 2, 3, 7, 11, 16
    q = torch.randn(B, Lq, H, D).transpose(1, 2)  # [B, H, Lq, D] with the heads interleaved
    kv = torch.randn(B, Lk, 2, H, D)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    lengths = torch.tensor([3, 11])
    out = cross_modal_attention(q, k, v, key_lengths=lengths, backend="torch")
    assert_close_to_reference(out, attention_reference(q, k, v, key_lengths=lengths), torch.float32, "out")


def test_lengths_equal_prefix_mask_and_list_lengths() -> None:
    q, k, v = make_qkv(3, 2, 4, 10, 16, torch.float32)
    lengths = torch.tensor([1, 5, 10])
    mask = torch.arange(10)[None, :] < lengths[:, None]
    a = cross_modal_attention(q, k, v, key_lengths=lengths)
    b = cross_modal_attention(q, k, v, key_padding_mask=mask)
    c = cross_modal_attention(q, k, v, key_lengths=[1, 5, 10])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_scale_argument() -> None:
    q, k, v = make_qkv(1, 1, 3, 4, 8, torch.float32)
    out = cross_modal_attention(q, k, v, scale=0.3)
    assert_close_to_reference(out, attention_reference(q, k, v, scale=0.3), torch.float32, "out")


# ----------------------------------------------------------------------------- dispatch


def test_auto_on_cpu_picks_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTMM_KERNEL_BACKEND", raising=False)
    q, k, v = make_qkv(1, 1, 2, 3, 8, torch.float32)
    a = validate_attention_args(q, k, v, None, None, None)
    assert resolve_backend("auto", a) == "torch"
    assert resolve_backend("torch", a) == "torch"


def test_env_variable_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = make_qkv(1, 1, 2, 3, 8, torch.float32)
    a = validate_attention_args(q, k, v, None, None, None)
    monkeypatch.setenv("MTMM_KERNEL_BACKEND", "torch")
    assert resolve_backend("auto", a) == "torch"
    monkeypatch.setenv("MTMM_KERNEL_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MTMM_KERNEL_BACKEND"):
        cross_modal_attention(q, k, v)
    assert resolve_backend("torch", a) == "torch"  # an explicit backend ignores the variable
    monkeypatch.setenv("MTMM_KERNEL_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton'"):
        cross_modal_attention(q, k, v)


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = make_qkv(1, 1, 2, 3, 8, torch.float32)
    with pytest.raises(ValueError, match="backend='triton'"):
        cross_modal_attention(q, k, v, backend="triton")


def test_triton_backend_refuses_float64_and_large_head_dim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v = make_qkv(1, 1, 2, 3, 8, torch.float64)
    with pytest.raises(ValueError, match="float64|triton"):
        cross_modal_attention(q, k, v, backend="triton")
    q, k, v = make_qkv(1, 1, 2, 3, 160, torch.float32)
    with pytest.raises(ValueError, match="D=160|triton"):
        cross_modal_attention(q, k, v, backend="triton")


def test_unknown_backend() -> None:
    q, k, v = make_qkv(1, 1, 2, 3, 8, torch.float32)
    with pytest.raises(ValueError, match="backend"):
        cross_modal_attention(q, k, v, backend="cuda")


def test_import_does_not_import_triton() -> None:
    code = "import sys, mtmm_kernels; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_backend_on_cpu_runs_both_kernels_without_importing_triton() -> None:
    code = (
        "import sys, torch, mtmm_kernels\n"
        "q = torch.randn(2, 1, 3, 8)\n"
        "mtmm_kernels.cross_modal_attention(q, q, q, key_lengths=torch.tensor([1, 3]))\n"
        "mtmm_kernels.multitask_loss([torch.randn(4, 3)], [torch.randint(0, 3, (4,))], ['cross_entropy'])\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MTMM_KERNEL_BACKEND")}
    subprocess.run([sys.executable, "-c", code], check=True, env=environment)


# ----------------------------------------------------------------------------- errors


def _qkv(B=2, H=3, Lq=4, Lk=5, D=8, dtype=torch.float32):
    return (torch.randn(B, H, Lq, D, dtype=dtype), torch.randn(B, H, Lk, D, dtype=dtype),
            torch.randn(B, H, Lk, D, dtype=dtype))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda q, k, v: (q[0], k, v), r"q must be a 4-D tensor of shape \[B, H, Lq, D\]"),
        (lambda q, k, v: (q, k[:1], v[:1]), r"k must have shape \[B=2, H=3, Lk, D=8\]"),
        (lambda q, k, v: (q, k[:, :2], v[:, :2]), r"k must have shape \[B=2, H=3"),
        (lambda q, k, v: (q, k[..., :4], v[..., :4]), r"k must have shape .*D=8"),
        (lambda q, k, v: (q, k, v[:, :, :3]), r"v must have the shape of k"),
        (lambda q, k, v: (q, k.half(), v.half()), r"k must have the dtype of q"),
        (lambda q, k, v: (q.int(), k.int(), v.int()), r"q has unsupported dtype torch.int32"),
        (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), r"Lk >= 1"),
        (lambda q, k, v: (q, k.to("meta"), v), r"k must be on the device of q"),
    ],
)
def test_bad_tensors(change, match: str) -> None:
    q, k, v = change(*_qkv())
    with pytest.raises(ValueError, match=match):
        cross_modal_attention(q, k, v)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"key_lengths": torch.tensor([1, 6])}, r"key_lengths must lie in \[0, Lk=5\]"),
        ({"key_lengths": torch.tensor([-1, 2])}, r"key_lengths must lie in \[0, Lk=5\]"),
        ({"key_lengths": torch.tensor([1, 2, 3])}, r"key_lengths must have shape \[B=2\]"),
        ({"key_lengths": torch.tensor([1.0, 2.0])}, r"key_lengths must be an integer tensor"),
        ({"key_lengths": torch.tensor([1, 2], device="meta")}, r"key_lengths must be on the device of q"),
        ({"key_padding_mask": torch.ones(2, 4, dtype=torch.bool)}, r"key_padding_mask must have shape \[B=2, Lk=5\]"),
        ({"key_padding_mask": torch.ones(2, 5)}, r"key_padding_mask must be a bool tensor"),
        ({"key_padding_mask": torch.ones(2, 5, dtype=torch.bool, device="meta")}, r"key_padding_mask must be on"),
        (
            {"key_lengths": torch.tensor([1, 2]), "key_padding_mask": torch.ones(2, 5, dtype=torch.bool)},
            r"at most one of key_lengths and key_padding_mask",
        ),
        ({"scale": "big"}, r"scale must be a float"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cross_modal_attention(*_qkv(), **kwargs)


def test_value_checks_switch_is_public_and_scoped() -> None:
    """``mtmm_kernels.value_checks(False)`` skips the checks that read values (lengths past Lk), only
    inside its block; shape checks still run there."""
    import mtmm_kernels

    q, k = torch.randn(2, 1, 3, 8), torch.randn(2, 1, 5, 8)
    too_long = torch.tensor([5, 6])  # 6 > Lk = 5
    assert mtmm_kernels.value_checks_enabled()
    with pytest.raises(ValueError, match="key_lengths"):
        mtmm_kernels.cross_modal_attention(q, k, k, key_lengths=too_long, backend="torch")
    with mtmm_kernels.value_checks(False):
        assert not mtmm_kernels.value_checks_enabled()
        mtmm_kernels.cross_modal_attention(q, k, k, key_lengths=too_long, backend="torch")  # not read
        with pytest.raises(ValueError):
            mtmm_kernels.cross_modal_attention(q, k[:, :, :, :4], k, key_lengths=too_long, backend="torch")
    assert mtmm_kernels.value_checks_enabled()
