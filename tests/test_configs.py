"""Every shipped config loads, validates and builds its model; `extends` merges as documented."""

from __future__ import annotations

import pytest

from mtmm_core.config import CONFIG_DIR, load_config
from mtmm_core.errors import SpecError
from mtmm_core.spec import build_model

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_the_promised_configs_are_shipped():
    assert {"default", "concat", "gated", "tfn", "lmf", "cross_attention", "perceiver", "mmoe_pcgrad"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_builds(name):
    config = load_config(name)
    model = build_model(config["model"])
    assert model.tasks == ["image_digit", "audio_digit", "match", "digit_sum"]
    if name != "default":
        assert config["model"] != load_config("default")["model"]


def test_extends_replaces_a_component_entry_that_names_a_new_component(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: default\nmodel:\n  fusion: {name: gated}\n  dim: 32\ntrain: {epochs: 3}\n")
    config = load_config(child)
    assert config["model"]["fusion"] == {"name": "gated"}  # the default's cross-attention heads do not leak in
    assert config["model"]["dim"] == 32 and config["train"]["epochs"] == 3
    assert config["model"]["encoders"] == load_config("default")["model"]["encoders"]


def test_extends_errors_name_the_key(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(SpecError, match="^extends: configs extend each other in a cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(SpecError, match="^extends: .* neither a file beside it nor a shipped config"):
        load_config(tmp_path / "c.yaml")
