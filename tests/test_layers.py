"""The shared attention blocks: keys resolved once, prefix masks take the kernel's lengths path."""

from __future__ import annotations

import torch

from mtmm_plugins.layers import AttentionKeys, TransformerBlock


def test_a_prefix_mask_becomes_lengths_and_any_other_stays_a_mask():
    lengths = torch.randint(0, 9, (5,))
    prefix = torch.arange(9)[None, :] < lengths[:, None]
    keys = AttentionKeys.from_mask(prefix)
    assert keys.mask is None and torch.equal(keys.lengths, lengths)
    scattered = torch.rand(5, 9) > 0.5
    scattered[0, 0], scattered[0, 1] = False, True  # row 0 is not a prefix
    keys = AttentionKeys.from_mask(scattered)
    assert keys.lengths is None and torch.equal(keys.mask, scattered)
    assert AttentionKeys.from_mask(None) == AttentionKeys()


def test_both_forms_of_the_same_keys_give_the_same_block_output():
    block = TransformerBlock(16, heads=4).eval()
    x = torch.randn(3, 7, 16)
    lengths = torch.tensor([7, 2, 0])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    by_lengths = block(x, keys=AttentionKeys(lengths=lengths))
    by_mask = block(x, keys=AttentionKeys(mask=mask))
    torch.testing.assert_close(by_lengths, by_mask)
    assert not torch.allclose(by_lengths, block(x))  # the keys do matter
