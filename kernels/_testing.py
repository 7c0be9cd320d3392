"""Input makers and tolerances shared by the attention tests and benchmarks."""

from __future__ import annotations

import torch

#: (atol, rtol) against the float64 reference, per dtype, for outputs and gradients.
TOLERANCES = {
    torch.float32: (2e-4, 2e-4),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (4e-2, 4e-2),
}


def make_qkv(
    B: int, H: int, Lq: int, Lk: int, D: int, dtype: torch.dtype, device: str = "cpu", generator=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh random ``q`` ``[B, H, Lq, D]`` and ``k``, ``v`` ``[B, H, Lk, D]`` (leaf tensors with grad)."""
    q, k, v = (
        torch.randn(B, H, L, D, generator=generator, device=device).to(dtype).requires_grad_()
        for L in (Lq, Lk, Lk)
    )
    return q, k, v


def make_lengths(B: int, Lk: int, device: str = "cpu") -> torch.Tensor:
    """Random valid lengths ``[B]`` in ``[0, Lk]``; includes 0 and ``Lk`` whenever ``B >= 2``."""
    lengths = torch.randint(0, Lk + 1, (B,), device=device)
    if B >= 2:
        lengths[0], lengths[-1] = 0, Lk
    return lengths


def make_mask(B: int, Lk: int, device: str = "cpu") -> torch.Tensor:
    """Random bool mask ``[B, Lk]``; sample 0 attends to nothing when ``B >= 2``."""
    mask = torch.rand(B, Lk, device=device) < 0.6
    if B >= 2:
        mask[0] = False
    return mask


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Compare a backend result with the float64 reference, scaled to the reference's magnitude."""
    atol, rtol = TOLERANCES[dtype]
    scale = max(1.0, ref.abs().max().item())
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    torch.testing.assert_close(out.double(), ref, atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}")


def reference_and_grads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Float64 reference output and its ``(dq, dk, dv)`` for the upstream gradient ``dout``."""
    from mtmm_kernels import attention_reference

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_reference(q64, k64, v64, **kwargs)
    grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    return ref.detach(), grads
