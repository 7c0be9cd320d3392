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

BUILTIN_COUNTS = {"encoder": 7, "fusion": 8, "head": 4, "architecture": 6}


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
    with pytest.raises(AmbiguousComponentError) as error, pytest.warns(plugins.ShadowingWarning):
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


BAD_ARGUMENT_PLUGIN = """
    from mtmm_core import hookimpl

    class Plugin:
        @hookimpl
        def register_encoders(self, regster):
            regster("never", dict)

    plugin = Plugin()
"""

MISSPELT_HOOK_PLUGIN = """
    from mtmm_core import hookimpl

    @hookimpl
    def register_encoder(register):
        register("x", dict)
"""


def make_object_plugin(make_distribution, distribution: str, source: str) -> None:
    """A distribution whose entry point is ``module:plugin`` (an object with hook methods)."""
    module = make_distribution(distribution, source)
    import importlib
    import sys
    from pathlib import Path

    site = Path(sys.path[0])
    (next(site.glob(f"{distribution.replace('-', '_')}-*.dist-info")) / "entry_points.txt").write_text(
        f"[mtmm]\nplugin = {module}:plugin\n")
    importlib.invalidate_caches()


def test_a_hookimpl_argument_not_in_the_spec_skips_that_plugin_with_a_warning(make_distribution):
    make_object_plugin(make_distribution, "bad-args", BAD_ARGUMENT_PLUGIN)
    make_distribution("fine-dist", good_plugin("fine"))
    with pytest.warns(plugins.PluginLoadWarning, match=r"'bad-args:plugin' from distribution 'bad-args'.*regster"):
        names = [c.name for c in mtmm_core.list_components("encoder")]
    assert "fine" in names and "cnn" in names and "never" not in names
    failed = [p for p in plugins.plugin_infos() if p.distribution == "bad-args"][0]
    assert failed.status == "failed" and "regster" in failed.error and "hook specification" in failed.error


def test_a_misspelt_hook_name_skips_that_plugin_with_a_warning(make_distribution):
    make_distribution("typo-dist", MISSPELT_HOOK_PLUGIN)
    make_distribution("fine-dist", good_plugin("fine"))
    with pytest.warns(plugins.PluginLoadWarning,
                      match=r"typo-dist.*unknown hook 'register_encoder' \(did you mean 'register_encoders'\?\)"):
        names = [c.name for c in mtmm_core.list_components("encoder")]
    assert "fine" in names and "x" not in names
    failed = [p for p in plugins.plugin_infos() if p.distribution == "typo-dist"][0]
    assert failed.status == "failed" and "valid hooks: register_encoders" in failed.error


def test_mtmm_plugins_shows_plugins_whose_hooks_do_not_match_as_failed(make_distribution, capsys):
    make_object_plugin(make_distribution, "bad-args", BAD_ARGUMENT_PLUGIN)
    make_distribution("typo-dist", MISSPELT_HOOK_PLUGIN)
    make_distribution("fine-dist", good_plugin("fine"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli_main(["plugins"]) == 0
        out = capsys.readouterr().out
        assert cli_main(["plugins", "--json"]) == 0
    names = ("bad-args", "typo-dist", "fine-dist")
    rows = {name: [line for line in out.splitlines() if name in line][0] for name in names}
    assert "failed" in rows["bad-args"] and "PluginError" in rows["bad-args"]
    assert "failed" in rows["typo-dist"] and "PluginError" in rows["typo-dist"]
    assert "regster" in " ".join(out.split()) and "unknown hook 'register_encoder'" in " ".join(out.split())
    assert "loaded" in rows["fine-dist"] and "encoder:fine" in rows["fine-dist"]
    import json

    listed = {p["distribution"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["bad-args"]["status"] == "failed" and "regster" in listed["bad-args"]["error"]
    assert listed["typo-dist"]["status"] == "failed" and listed["fine-dist"]["status"] == "loaded"


def test_strict_mode_makes_a_hook_mismatch_an_error_naming_the_plugin(make_distribution, monkeypatch):
    monkeypatch.setenv("MTMM_STRICT_PLUGINS", "1")
    make_distribution("typo-dist", MISSPELT_HOOK_PLUGIN)
    with pytest.raises(PluginError, match=r"typo-dist.*register_encoder.*valid hooks: register_encoders"):
        mtmm_core.list_components()


def test_strict_mode_makes_an_argument_not_in_the_spec_an_error_naming_the_plugin(make_distribution, monkeypatch):
    monkeypatch.setenv("MTMM_STRICT_PLUGINS", "1")
    make_distribution("bad-args", """
        from mtmm_core import hookimpl

        @hookimpl
        def register_fusions(register, config):
            pass
    """)
    with pytest.raises(PluginError, match=r"bad-args.*config.*MTMM_STRICT_PLUGINS"):
        mtmm_core.list_components()


def test_a_plugin_naming_a_builtin_warns_and_the_plain_name_stays_the_builtin(make_distribution, capsys):
    make_distribution("mtmm-extra", good_plugin("cnn", "the extra cnn"), version="1.0.0")
    with pytest.warns(plugins.ShadowingWarning) as caught:
        component = mtmm_core.get_component("encoder", "cnn")
    messages = [str(w.message) for w in caught if issubclass(w.category, plugins.ShadowingWarning)]
    assert messages == ["encoder 'cnn' from mtmm-extra 1.0.0 has the name of a built-in; 'cnn' stays the "
                        "built-in, use 'mtmm-extra:cnn' for this one"]
    assert issubclass(plugins.ShadowingWarning, plugins.PluginLoadWarning)
    assert component.distribution == "mtmm"
    assert type(mtmm_core.create("encoder", "cnn")).__module__.startswith("mtmm")
    assert type(mtmm_core.create("encoder", "cnn")).__name__ != "Doubler"
    assert type(mtmm_core.create("encoder", "mtmm-extra:cnn", dim=4)).__name__ == "Doubler"
    assert mtmm_core.get_component("encoder", "mtmm:cnn") is component

    with warnings.catch_warnings(record=True) as again:  # warned once per load, not per lookup
        warnings.simplefilter("always")
        mtmm_core.get_component("encoder", "cnn")
    assert not again

    assert cli_main(["plugins"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if "mtmm-extra" in line][0]
    assert "loaded (clash)" in row
    assert "clash: encoder cnn (built-in keeps the name; use mtmm-extra:cnn)" in " ".join(out.split())
    assert cli_main(["plugins", "--json"]) == 0
    import json

    extra = [p for p in json.loads(capsys.readouterr().out) if p["distribution"] == "mtmm-extra"][0]
    assert extra["clashes"] == [{"kind": "encoder", "name": "cnn", "distributions": ["mtmm", "mtmm-extra"],
                                 "resolves_to": "mtmm", "use": "mtmm-extra:cnn"}]


def test_a_clash_between_two_third_party_distributions_warns_and_stays_ambiguous(make_distribution):
    make_distribution("first-dist", good_plugin("shared"))
    make_distribution("second-dist", good_plugin("shared"))
    with pytest.warns(plugins.ShadowingWarning, match=r"encoder 'shared' is registered by several distributions.*"
                                                      r"'first-dist:shared', 'second-dist:shared'"):
        mtmm_core.list_components()
    with pytest.raises(AmbiguousComponentError):
        mtmm_core.get_component("encoder", "shared")
    clashes = {p.distribution: p.clashes for p in plugins.plugin_infos() if p.clashes}
    assert set(clashes) == {"first-dist", "second-dist"}
    assert clashes["second-dist"][0]["resolves_to"] is None
    assert clashes["second-dist"][0]["use"] == "second-dist:shared"


def test_an_unknown_name_lists_the_close_names_of_that_kind():
    with pytest.raises(UnknownComponentError, match=r"unknown fusion 'cross_atention'; did you mean 'cross_attention'"):
        mtmm_core.get_component("fusion", "cross_atention")
    with pytest.raises(UnknownComponentError, match="Known encoders: cnn, hf, patch_transformer"):
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


def test_registering_an_installed_plugin_module_again_warns_and_keeps_its_components_once():
    """``register_plugin`` on the module an entry point already loads: a warning naming both, not a crash
    of every lookup; the built-in encoders stay registered once, under their entry point."""
    import mtmm_plugins.encoders

    before = mtmm_core.list_components("encoder")
    name = mtmm_core.register_plugin(mtmm_plugins.encoders, name="again")
    try:
        with pytest.warns(plugins.PluginLoadWarning, match=r"'again'.*already loaded as plugin 'mtmm:encoders'"):
            after = mtmm_core.list_components("encoder")
        assert after == before
        assert next(p for p in plugins.plugin_infos() if p.name == "again").status == "failed"
    finally:
        mtmm_core.unregister_plugin(name)


def test_describe_reports_parameters_and_provenance(make_distribution):
    make_distribution("acme-encoders", good_plugin())
    info = mtmm_core.describe("encoder", "doubler")
    assert info["distribution"] == "acme-encoders" and info["description"] == "a test encoder"
    parameters = {p["name"]: p for p in info["parameters"]}
    assert parameters["factor"] == {"name": "factor", "type": "float", "default": 2.0, "required": False,
                                    "set_by_mtmm": False, "default_from": None}
