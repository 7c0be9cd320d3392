"""Tests of the built-in encoders (shapes, gradients, masking, absent samples, errors, registry)."""

import pytest
import torch

from mtmm_core.contracts import EncoderOutput
from mtmm_plugins import encoders
from mtmm_plugins.encoders import (
    ByteTextEncoder,
    ByteTokenizer,
    HFEncoder,
    ImageCNN,
    ImagePatchTransformer,
    SequenceTransformer,
    TabularMLP,
    TimmEncoder,
)

DIM = 32


def random_lengths(batch: int, steps: int) -> torch.Tensor:
    """Lengths [B] in [1, steps] with at least one full row and one shorter row."""
    lengths = torch.randint(1, steps + 1, (batch,))
    lengths[0], lengths[1] = steps, torch.randint(1, steps, ()).item()
    return lengths


def random_text(batch: int) -> list[str]:
    """Random strings, some characters multi-byte in UTF-8; the first (12 characters) is the longest."""
    alphabet = "abcdefgh xyz é€"
    sizes = [12, *torch.randint(1, 12, (batch - 1,)).tolist()]
    return ["".join(alphabet[i] for i in torch.randint(len(alphabet), (size,))) for size in sizes]


def random_table(batch: int) -> dict[str, torch.Tensor]:
    """Four numeric features and two categorical columns of cardinality 3 and 5."""
    categorical = torch.stack([torch.randint(3, (batch,)), torch.randint(5, (batch,))], dim=1)
    return {"numeric": torch.randn(batch, 4), "categorical": categorical}


# name -> () -> (encoder, input of batch 3, lengths, expected number of tokens; None = longest text)
CASES = {
    "cnn_8x8": lambda: (ImageCNN(dim=DIM, channels=(8, 16)), torch.randn(3, 1, 8, 8), None, 4),
    "cnn_28x28": lambda: (
        ImageCNN(in_channels=3, dim=DIM, channels=(8,)),
        torch.randn(3, 3, 28, 28),
        None,
        14 * 14,
    ),
    "patch": lambda: (
        ImagePatchTransformer(image_size=8, patch_size=4, in_channels=2, dim=DIM, depth=1),
        torch.randn(3, 2, 8, 8),
        None,
        5,
    ),
    "sequence": lambda: (
        SequenceTransformer(in_features=13, dim=DIM, max_len=16),
        torch.randn(3, 7, 13),
        random_lengths(3, 7),
        7,
    ),
    "text": lambda: (ByteTextEncoder(dim=DIM, depth=1, max_len=64), random_text(3), None, None),
    "tabular": lambda: (
        TabularMLP(num_numeric=4, categories=[3, 5], hidden=DIM, dim=DIM),
        random_table(3),
        None,
        1 + 2,  # the numeric token, then one per categorical column
    ),
}
CASE_NAMES = list(CASES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_output_shapes_and_mask_dtype(name):
    encoder, x, lengths, num_tokens = CASES[name]()
    out = encoder(x, lengths)
    assert isinstance(out, EncoderOutput)
    assert encoder.out_dim == DIM
    if num_tokens is None:  # text: one token per byte of the longest string
        num_tokens = max(len(text.encode("utf-8")) for text in x)
    assert out.tokens.shape == (3, num_tokens, DIM)
    assert out.mask.shape == (3, num_tokens) and out.mask.dtype == torch.bool
    assert torch.isfinite(out.tokens).all()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    encoder, x, lengths, _ = CASES[name]()
    out = encoder(x, lengths)
    # Random weights: a plain sum of LayerNorm outputs has zero gradient.
    loss = (out.tokens * torch.randn_like(out.tokens) * out.mask[..., None]).sum()
    loss.backward()
    for param_name, param in encoder.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, param_name


def test_cnn_handles_common_image_sizes():
    encoder = ImageCNN(dim=DIM, channels=(8, 16))
    for side, tokens in ((8, 4), (28, 49), (32, 64)):
        assert encoder(torch.randn(2, 1, side, side)).tokens.shape == (2, tokens, DIM)


def test_sequence_mask_follows_lengths_and_ignores_padding():
    encoder = SequenceTransformer(in_features=5, dim=DIM).eval()
    frames, lengths = torch.randn(4, 9, 5), random_lengths(4, 9)
    out = encoder(frames, lengths)
    expected_mask = torch.arange(9)[None, :] < lengths[:, None]
    assert torch.equal(out.mask, expected_mask)
    repadded = torch.where(expected_mask[..., None], frames, 100 * torch.randn_like(frames))
    again = encoder(repadded, lengths)
    assert torch.allclose(out.tokens[expected_mask], again.tokens[expected_mask], atol=1e-5)
    assert (again.tokens[~expected_mask] == 0).all()
    assert encoder(frames).mask.all()


def test_text_mask_follows_lengths_and_ignores_padding():
    encoder = ByteTextEncoder(dim=DIM, depth=1).eval()
    texts = random_text(4)
    ids, lengths = ByteTokenizer().encode(texts, max_len=64)
    from_strings = encoder(texts)
    assert torch.equal(from_strings.mask, torch.arange(ids.shape[1])[None, :] < lengths[:, None])
    assert torch.allclose(encoder(ids).tokens, from_strings.tokens)
    noisy_ids = torch.where(from_strings.mask, ids, torch.randint(1, 257, ids.shape))
    from_ids = encoder(noisy_ids, lengths)
    valid = from_strings.mask
    assert torch.equal(from_ids.mask, valid)
    assert torch.allclose(from_ids.tokens[valid], from_strings.tokens[valid], atol=1e-5)


def test_byte_tokenizer_round_trip_and_truncation():
    tokenizer = ByteTokenizer()
    ids, lengths = tokenizer.encode(["héllo", "", "abcdefgh"], max_len=6)
    assert ids.shape == (3, 6) and lengths.tolist() == [6, 0, 6]
    assert ids.min() >= 0 and (ids[1] == ByteTokenizer.PAD_ID).all()
    assert tokenizer.decode(ids, lengths) == ["héllo", "", "abcdef"]


def test_absent_samples_give_finite_tokens_and_empty_masks():
    absent = torch.tensor([1, 0, 1])
    images = torch.randn(3, 1, 8, 8)
    images[1] = 0
    image_encoders = (ImageCNN(dim=DIM, channels=(8,)), ImagePatchTransformer(image_size=8, dim=DIM, depth=1))
    for encoder in image_encoders:
        out = encoder(images, absent)
        assert torch.isfinite(out.tokens).all()
        assert out.mask[[0, 2]].all() and not out.mask[1].any()

    frames = torch.randn(3, 6, 13)
    frames[1] = 0
    out = SequenceTransformer(in_features=13, dim=DIM)(frames, torch.tensor([6, 0, 3]))
    assert torch.isfinite(out.tokens).all() and not out.mask[1].any() and (out.tokens[1] == 0).all()

    out = ByteTextEncoder(dim=DIM, depth=1)(["some text", "", "more"])
    assert torch.isfinite(out.tokens).all() and not out.mask[1].any()
    all_empty = ByteTextEncoder(dim=DIM, depth=1)(["", ""])
    assert torch.isfinite(all_empty.tokens).all() and not all_empty.mask.any()
    out = ByteTextEncoder(dim=DIM, depth=1)(["present", "absent"], torch.tensor([7, 0]))
    assert torch.isfinite(out.tokens).all() and not out.mask[1].any() and out.mask[0].all()

    table = {"numeric": torch.zeros(3, 4), "categorical": torch.zeros(3, 2, dtype=torch.long)}
    out = TabularMLP(num_numeric=4, categories=[3, 5], dim=DIM)(table, absent)
    assert torch.isfinite(out.tokens).all() and not out.mask[1].any()


def expect_error(encoder, x, lengths, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encoder(x, lengths)


def test_image_cnn_shape_errors():
    cnn = ImageCNN(dim=DIM)
    expect_error(cnn, torch.randn(2, 8, 8), None, r"image \[B, 1, H, W\] \(4 dimensions\), got 3")
    expect_error(cnn, torch.randn(2, 3, 8, 8), None, r"image \[B, 1, H, W\], got dimension 1 = 3")
    expect_error(cnn, torch.randn(2, 1, 3, 8), None, r"height of at least 4 .* got dimension 2 = 3")
    expect_error(cnn, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), None, r"floating-point image")
    expect_error(cnn, torch.randn(2, 1, 8, 8), torch.tensor([1, 1, 0]), r"lengths \[2\], got dimension 0 = 3")


def test_patch_transformer_shape_errors():
    vit = ImagePatchTransformer(image_size=8, dim=DIM)
    expect_error(vit, torch.randn(2, 1, 8, 12), None, r"image \[B, 1, 8, 8\], got dimension 3 = 12")
    expect_error(vit, [[0.0]], None, r"image as a tensor .* got list")


def test_sequence_transformer_shape_errors():
    frames = torch.randn(2, 5, 13)
    sequence = SequenceTransformer(in_features=13, dim=DIM)
    expect_error(sequence, torch.randn(2, 5, 12), None, r"frames \[B, T, 13\], got dimension 2 = 12")
    expect_error(sequence, frames, torch.tensor([2, 6]), r"lengths in \[0, 5\], got 6 at sample 1")
    expect_error(sequence, frames, torch.tensor([-1, 2]), r"lengths in \[0, 5\], got -1 at sample 0")
    expect_error(sequence, frames, torch.tensor([2.0, 3.0]), r"integer lengths")
    short = SequenceTransformer(in_features=13, dim=DIM, max_len=4)
    expect_error(short, frames, None, r"T <= max_len=4, got dimension 1 = 5")


def test_text_shape_errors():
    text = ByteTextEncoder(dim=DIM, max_len=4)
    expect_error(text, torch.ones(2, 5, dtype=torch.long), None, r"T <= max_len=4, got dimension 1 = 5")
    expect_error(text, torch.ones(2, 3, 4, dtype=torch.long), None, r"ids \[B, T\] \(2 dimensions\)")
    expect_error(text, torch.full((2, 3), 300), None, r"ids in \[0, 256\], got 300")
    expect_error(text, ["ok", 3], None, r"list of str, got int at index 1")
    expect_error(text, "not a list", None, r"list of str or ids \[B, T\], got str")


def test_tabular_shape_errors():
    numeric_only = TabularMLP(num_numeric=4, dim=DIM)
    expect_error(numeric_only, torch.randn(2, 5), None, r"numeric \[B, 4\], got dimension 1 = 5")
    mixed = TabularMLP(num_numeric=1, categories=[3, 5], dim=DIM)
    numeric = torch.randn(2, 1)
    expect_error(mixed, torch.randn(2, 1), None, r"expected a dict with 'categorical'")
    expect_error(mixed, {"numeric": numeric}, None, r"key 'categorical'")
    out_of_range = {"numeric": numeric, "categorical": torch.tensor([[0, 4], [2, 5]])}
    expect_error(mixed, out_of_range, None, r"categorical column 1 in \[0, 4\], got 5 at sample 1")
    one_column = {"numeric": numeric, "categorical": torch.zeros(2, 1, dtype=torch.long)}
    expect_error(mixed, one_column, None, r"categorical \[B, 2\], got dimension 1 = 1")


def test_bad_configuration_raises_value_error():
    with pytest.raises(ValueError, match=r"image_size divisible by patch_size=5, got image_size=32"):
        ImagePatchTransformer(image_size=32, patch_size=5)
    with pytest.raises(ValueError, match=r"at least one entry in channels"):
        ImageCNN(channels=())
    with pytest.raises(ValueError, match=r"at least one column"):
        TabularMLP(num_numeric=0)
    with pytest.raises(ValueError, match=r"divisible by heads=3"):
        SequenceTransformer(in_features=2, dim=32, heads=3)


def test_register_encoders_registers_the_seven_built_ins():
    registered = {}
    encoders.register_encoders(lambda name, factory, **metadata: registered.setdefault(name, factory))
    assert registered == {
        "cnn": ImageCNN,
        "patch_transformer": ImagePatchTransformer,
        "sequence_transformer": SequenceTransformer,
        "text": ByteTextEncoder,
        "tabular": TabularMLP,
        "timm": TimmEncoder,  # the pretrained backbones: listed without their extras (docs/pretrained.md)
        "hf": HFEncoder,
    }
    for factory in registered.values():
        assert factory.__doc__.strip().splitlines()[0]
