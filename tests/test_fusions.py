"""The built-in fusions: registration, shapes, gradients and the missing-modality contract.

Inputs are fresh random tensors on every run. Two modalities of different widths
and lengths ("image" [B, 16, 32] with a scattered mask, "audio" [B, 23, 48] with
variable-length prefix masks); each is missing from some samples.
"""

from __future__ import annotations

import pluggy
import pytest
import torch
from torch import nn

import mtmm_plugins.fusions as fusions_plugin
from mtmm_core import hookspecs

EXPECTED_NAMES = ("concat", "mean", "late", "gated", "tfn", "lmf", "cross_attention", "perceiver")
INPUT_DIMS = {"image": 32, "audio": 48}  # deliberately not in sorted order
LENGTHS = {"image": 16, "audio": 23}
BATCH = 6
DIM = 32
# Samples 0 and 3 have both modalities; 1 and 4 lack image; 2 and 5 lack audio.
PRESENT = {
    "image": [True, False, True, True, False, True],
    "audio": [True, True, False, True, True, False],
}

Batch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]


def registered_fusions() -> dict[str, type[nn.Module]]:
    """The fusions the plugin's ``register_fusions`` hook registers, by name."""
    manager = pluggy.PluginManager("mtmm")
    manager.add_hookspecs(hookspecs)
    manager.register(fusions_plugin)
    found: dict[str, type[nn.Module]] = {}

    def register(name: str, factory: type[nn.Module], **metadata: object) -> None:
        assert name not in found, f"{name} registered twice"
        found[name] = factory

    manager.hook.register_fusions(register=register)
    return found


FUSIONS = registered_fusions()


def build(name: str) -> nn.Module:
    return FUSIONS[name](input_dims=INPUT_DIMS, dim=DIM).eval()


def make_batch() -> Batch:
    """Random tokens and masks; absent samples get full masks so nothing hints at their absence."""
    tokens = {m: torch.randn(BATCH, LENGTHS[m], INPUT_DIMS[m]) for m in INPUT_DIMS}
    audio_lengths = torch.randint(1, LENGTHS["audio"] + 1, (BATCH,))
    image_mask = torch.rand(BATCH, LENGTHS["image"]) < 0.6
    image_mask[:, 3] = True  # at least one valid token per sample
    masks = {
        "image": image_mask,
        "audio": torch.arange(LENGTHS["audio"])[None, :] < audio_lengths[:, None],
    }
    present = {m: torch.tensor(flags) for m, flags in PRESENT.items()}
    for m in masks:
        masks[m][~present[m]] = True
    return tokens, masks, present


def only(modality: str, batch: Batch) -> Batch:
    """The batch restricted to one modality, present in every sample."""
    tokens, masks, _ = batch
    return {modality: tokens[modality]}, {modality: masks[modality]}, {modality: torch.ones(BATCH, dtype=torch.bool)}


def test_hook_registers_the_eight_fusions():
    assert set(FUSIONS) == set(EXPECTED_NAMES)
    for name, factory in FUSIONS.items():
        assert (factory.__doc__ or "").strip(), f"{name} needs a docstring (its registry description)"


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_output_shape_and_finite(name):
    fusion = build(name)
    out = fusion(*make_batch())
    assert fusion.out_dim == DIM
    assert out.shape == (BATCH, fusion.out_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_backward_gives_finite_nonzero_gradients(name):
    fusion = build(name).train()
    out = fusion(*make_batch())
    (out * torch.randn_like(out)).sum().backward()
    for param_name, param in fusion.named_parameters():
        assert param.grad is not None, f"{name}.{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}.{param_name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name}.{param_name} has an all-zero gradient"


@pytest.mark.parametrize("modality", sorted(INPUT_DIMS))
@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_absent_modality_tokens_do_not_influence_output(name, modality):
    fusion = build(name)
    tokens, masks, present = make_batch()
    absent = ~present[modality]
    changed_sample = int(present[modality].nonzero()[0])
    with torch.no_grad():
        before = fusion(tokens, masks, present)
        garbage_tokens = dict(tokens)
        garbage_tokens[modality] = tokens[modality].clone()
        garbage_tokens[modality][absent] = 1e3 * torch.randn_like(tokens[modality][absent])
        garbage_tokens[modality][changed_sample] = torch.randn_like(tokens[modality][changed_sample])
        garbage_masks = dict(masks)
        garbage_masks[modality] = masks[modality].clone()
        garbage_masks[modality][absent] = torch.rand_like(masks[modality][absent], dtype=torch.float) < 0.5
        after = fusion(garbage_tokens, garbage_masks, present)
    assert torch.isfinite(after).all()
    untouched = torch.ones(BATCH, dtype=torch.bool)
    untouched[changed_sample] = False
    torch.testing.assert_close(after[untouched], before[untouched], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[changed_sample], before[changed_sample], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("modality", sorted(INPUT_DIMS))
@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_batch_with_a_single_modality(name, modality):
    fusion = build(name)
    tokens, masks, present = only(modality, make_batch())
    with torch.no_grad():
        out = fusion(tokens, masks, present)
        changed = fusion({modality: torch.randn_like(tokens[modality])}, masks, present)
    assert out.shape == (BATCH, DIM)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, changed), "the output should depend on the one modality it has"


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_dict_order_does_not_change_the_output(name):
    fusion = build(name)
    tokens, masks, present = make_batch()
    with torch.no_grad():
        out = fusion(tokens, masks, present)
        reordered = fusion(*({m: d[m] for m in reversed(list(d))} for d in (tokens, masks, present)))
    assert torch.equal(reordered, out), "modalities must be combined in sorted order, bit for bit"


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_bad_input_raises_value_error_naming_the_modality(name):
    fusion = build(name)
    tokens, masks, present = make_batch()
    with pytest.raises(ValueError, match="audio"):
        fusion({**tokens, "audio": tokens["audio"][:, :, :40]}, masks, present)
    with pytest.raises(ValueError, match="video"):
        video = torch.zeros(BATCH, 2, 8)
        video_mask = torch.ones(BATCH, 2, dtype=torch.bool)
        fusion({**tokens, "video": video}, {**masks, "video": video_mask}, {**present, "video": present["audio"]})
    with pytest.raises(ValueError, match="no modality present"):
        fusion(tokens, masks, {m: torch.zeros(BATCH, dtype=torch.bool) for m in present})
    with pytest.raises(ValueError, match="input_dims"):
        FUSIONS[name](input_dims={}, dim=DIM)
