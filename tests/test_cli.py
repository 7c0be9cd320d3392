"""The `mtmm` command: list, plugins, describe, JSON output and errors."""

from __future__ import annotations

import json

from mtmm_core.cli import main


def test_list_prints_every_kind_and_filters(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["cnn", "cross_attention", "classification", "mmoe", "uncertainty"]:
        assert name in out
    assert main(["list", "fusion", "*f*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["kind"] == "fusion" and "f" in r["name"] for r in rows)
    assert {"tfn", "lmf"} <= {r["name"] for r in rows}


def test_list_with_no_match_says_so_and_fails(capsys):
    assert main(["list", "encoder", "nothing*"]) == 1
    assert "no encoder matches 'nothing*'" in capsys.readouterr().err


def test_plugins_lists_builtin_plugins_with_hooks_and_components(capsys):
    assert main(["plugins", "--json"]) == 0
    infos = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert infos["mtmm:encoders"]["hooks"] == ["register_encoders"]
    assert "encoder:cnn" in infos["mtmm:encoders"]["components"]
    assert {p["status"] for p in infos.values()} == {"loaded"}


def test_describe_shows_parameters(capsys):
    assert main(["describe", "head", "classification"]) == 0
    out = capsys.readouterr().out
    assert "num_classes" in out and "required" in out and "in_dim" in out and "set by mtmm" in out
    assert main(["describe", "encoders", "sequence_transformer", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "sequence_transformer"
    assert {"name": "in_features", "type": "int", "default": None, "required": True,
            "set_by_mtmm": False, "default_from": None} in info["parameters"]
    assert {p["name"]: p["default_from"] for p in info["parameters"]}["dim"] == "model.dim"


def test_describe_says_model_dim_wins_over_a_dim_default_and_an_entry_wins_over_both(capsys):
    """What `describe` prints for `dim` is what build_model does."""
    import mtmm_core

    assert main(["describe", "fusion", "cross_attention"]) == 0
    out = capsys.readouterr().out
    assert "model.dim (the spec's value; 128 only if it sets none)" in out
    spec = {"dim": 48, "encoders": {"a": {"name": "tabular", "num_numeric": 3}, "b": {"name": "tabular", "num_numeric": 2}},
            "fusion": {"name": "cross_attention"}, "tasks": {"t": {"head": "regression"}}}
    model = mtmm_core.build_model(spec)
    assert model.encoders["a"].out_dim == 48 and model.fusion.out_dim == 48
    model = mtmm_core.build_model({**spec, "fusion": {"name": "cross_attention", "dim": 32}})
    assert model.encoders["a"].out_dim == 48 and model.fusion.out_dim == 32
    model = mtmm_core.build_model({k: v for k, v in spec.items() if k != "dim"})
    assert model.fusion.out_dim == 128


def test_unknown_names_exit_2_with_suggestions(capsys):
    assert main(["describe", "fusion", "gatted"]) == 2
    assert "did you mean 'gated'" in capsys.readouterr().err
    assert main(["list", "encodr"]) == 2
    assert "valid kinds" in capsys.readouterr().err
