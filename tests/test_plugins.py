"""Plugin discovery, provenance and every failure behaviour of the loader."""

from __future__ import annotations

import warnings

import pytest
import torch

import mtmm_core
from mtmm_core import plugins
from mtmm_core.cli import main as cli_main
from mtmm_core.errors import AmbiguousComponentError, PluginError, UnknownComponentError

GOOD_PLUGIN = """
    from torch import nn
    from mtmm_core import hookimpl

    class Doubler(nn.Module):
        '''Doubles its input.'''

        def __init__(self, *, dim: int = 8, factor: float = 2.0):
            super().__init__()
            self.out_dim = dim

    @hookimpl
    def register_encoders(register):
        register("{name}", Doubler, description="{description}")
"""

BUILTIN_COUNTS = {"encoder": 5, "fusion": 8, "head": 4, "architecture": 6}


def good_plugin(name: str = "doubler", description: str = "a test encoder") -> str:
    return GOOD_PLUGIN.format(name=name, description=description)


def test_builtins_are_registered_through_the_entry_point_group():
    for kind, count in BUILTIN_COUNTS.items():
        components = mtmm_core.list_components(kind)
        assert len(components) == count, [c.name for c in components]
        assert {c.distribution for c in components} == {"mtmm"}
        assert all(c.plugin.startswith("mtmm:") and c.description for c in components)
    assert {p.status for p in plugins.plugin_infos()} == {"loaded"}


def test_list_components_filters_by_kind_and_fnmatch_pattern():
    names = [c.name for c in mtmm_core.list_components("encoders", "*transformer")]
    assert names == ["patch_transformer", "sequence_transformer"]
    assert all(c.kind == "fusion" for c in mtmm_core.list_components("fusion"))
    with pytest.raises(ValueError, match="unknown component kind 'encodr'.*encoder"):
        mtmm_core.list_components("encodr")


def test_a_third_party_distribution_is_discovered_with_its_provenance(make_distribution):
    make_distribution("acme-encoders", good_plugin(), version="2.3.4")
    component = mtmm_core.get_component("encoder", "doubler")
    assert (component.distribution, component.version) == ("acme-encoders", "2.3.4")
    assert component.description == "a test encoder"
    assert component.qualified_name == "acme-encoders:doubler"
    assert mtmm_core.get_component("encoder", "acme_encoders:doubler") is component
    assert mtmm_core.create("encoder", "doubler", dim=5).out_dim == 5


def test_plugins_load_lazily_and_once(make_distribution):
    module = make_distribution("counting", good_plugin("counted") + "\n    LOADS = globals().get('LOADS', 0) + 1\n")
    import sys

    assert module not in sys.modules
    for _ in range(3):
        mtmm_core.list_components("encoder")
    assert sys.modules[module].LOADS == 1


def test_a_plugin_that_raises_on_import_warns_and_the_rest_still_load(make_distribution):
    make_distribution("broken-dist", "raise RuntimeError('boom at import')\n")
    make_distribution("fine-dist", good_plugin("fine"))
    with pytest.warns(plugins.PluginLoadWarning, match=r"broken-dist.*RuntimeError: boom at import"):
        names = [c.name for c in mtmm_core.list_components("encoder")]
    assert "fine" in names and "cnn" in names
    failed = [p for p in plugins.plugin_infos() if p.distribution == "broken-dist"]
    assert failed[0].status == "failed" and "boom at import" in failed[0].error


def test_mtmm_plugins_command_shows_the_failed_plugin(make_distribution, capsys):
    make_distribution("broken-dist", "raise RuntimeError('boom at import')\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli_main(["plugins"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if "broken-dist" in line][0]
    assert "failed" in row and "RuntimeError" in row


def test_strict_mode_makes_an_import_failure_an_error(make_distribution, monkeypatch):
    make_distribution("broken-dist", "raise RuntimeError('boom at import')\n")
    monkeypatch.setenv("MTMM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken-dist.*boom at import"):
        mtmm_core.list_components()


def test_a_hook_that_raises_while_registering_is_reported_like_an_import_failure(make_distribution):
    make_distribution("raising-hook", """
        from mtmm_core import hookimpl

        @hookimpl
        def register_heads(register):
            raise KeyError('missing config')
    """)
    with pytest.warns(plugins.PluginLoadWarning, match="raising-hook.*missing config"):
        assert len(mtmm_core.list_components("head")) == BUILTIN_COUNTS["head"]


def test_two_distributions_with_the_same_name_give_a_clear_error_and_two_ways_out(make_distribution, monkeypatch):
    make_distribution("first-dist", good_plugin("shared"))
    make_distribution("second-dist", good_plugin("shared"))
    with pytest.raises(AmbiguousComponentError) as error:
        mtmm_core.get_component("encoder", "shared")
    message = str(error.value)
    assert "first-dist" in message and "second-dist" in message
    assert "first-dist:shared" in message and "MTMM_DISABLE_PLUGINS" in message
    assert mtmm_core.get_component("encoder", "second-dist:shared").distribution == "second-dist"
    monkeypatch.setenv("MTMM_DISABLE_PLUGINS", "second-dist")
    plugins.reset()
    assert mtmm_core.get_component("encoder", "shared").distribution == "first-dist"


def test_the_same_distribution_registering_a_name_twice_is_an_error(make_distribution):
    make_distribution("twice", """
        from mtmm_core import hookimpl

        @hookimpl
        def register_encoders(register):
            register("again", dict)
            register("again", dict)
    """)
    with pytest.raises(PluginError, match="'again' is registered twice by distribution 'twice'"):
        mtmm_core.list_components()


def test_a_misspelt_hook_name_is_an_error_naming_the_plugin(make_distribution):
    make_distribution("typo-dist", """
        from mtmm_core import hookimpl

        @hookimpl
        def register_encoder(register):
            register("x", dict)
    """)
    with pytest.raises(PluginError, match=r"typo-dist.*register_encoder.*valid hooks: register_encoders"):
        mtmm_core.list_components()


def test_an_argument_not_in_the_spec_is_an_error_naming_the_plugin(make_distribution):
    make_distribution("bad-args", """
        from mtmm_core import hookimpl

        @hookimpl
        def register_fusions(register, config):
            pass
    """)
    with pytest.raises(PluginError, match=r"bad-args.*config"):
        mtmm_core.list_components()


def test_an_unknown_name_lists_the_close_names_of_that_kind():
    with pytest.raises(UnknownComponentError, match=r"unknown fusion 'cross_atention'; did you mean 'cross_attention'"):
        mtmm_core.get_component("fusion", "cross_atention")
    with pytest.raises(UnknownComponentError, match="Known encoders: cnn, patch_transformer"):
        mtmm_core.create("encoder", "zzz")


def test_load_plugins_allowlist_and_disable_blocklist(make_distribution, monkeypatch):
    make_distribution("allowed-dist", good_plugin("allowed"))
    make_distribution("other-dist", good_plugin("other"))
    monkeypatch.setenv("MTMM_LOAD_PLUGINS", "")
    names = {c.name for c in mtmm_core.list_components("encoder")}
    assert "allowed" not in names and "other" not in names and "cnn" in names

    monkeypatch.setenv("MTMM_LOAD_PLUGINS", "allowed_dist")
    plugins.reset()
    names = {c.name for c in mtmm_core.list_components("encoder")}
    assert "allowed" in names and "other" not in names
    statuses = {p.distribution: (p.status, p.error) for p in plugins.plugin_infos()}
    assert statuses["other-dist"] == ("disabled", "not in MTMM_LOAD_PLUGINS")

    monkeypatch.delenv("MTMM_LOAD_PLUGINS")
    monkeypatch.setenv("MTMM_DISABLE_PLUGINS", "other-dist")
    plugins.reset()
    names = {c.name for c in mtmm_core.list_components("encoder")}
    assert "allowed" in names and "other" not in names


def test_an_in_process_plugin_can_be_registered_and_removed():
    class NotebookPlugin:
        @mtmm_core.hookimpl
        def register_weightings(self, register):
            register("notebook_weighting", torch.nn.Identity, description="from a notebook")

    name = mtmm_core.register_plugin(NotebookPlugin(), name="notebook")
    try:
        component = mtmm_core.get_component("weighting", "notebook_weighting")
        assert (component.distribution, component.plugin) == (plugins.IN_PROCESS, "notebook")
        with pytest.raises(PluginError, match="already registered"):
            mtmm_core.register_plugin(NotebookPlugin(), name="notebook")
    finally:
        mtmm_core.unregister_plugin(name)
    with pytest.raises(UnknownComponentError):
        mtmm_core.get_component("weighting", "notebook_weighting")


def test_describe_reports_parameters_and_provenance(make_distribution):
    make_distribution("acme-encoders", good_plugin())
    info = mtmm_core.describe("encoder", "doubler")
    assert info["distribution"] == "acme-encoders" and info["description"] == "a test encoder"
    parameters = {p["name"]: p for p in info["parameters"]}
    assert parameters["factor"] == {"name": "factor", "type": "float", "default": 2.0, "required": False,
                                    "set_by_mtmm": False}
