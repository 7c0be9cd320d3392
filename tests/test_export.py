"""mtmm export: safetensors, ONNX and TorchScript folders reproduce the trained model (docs/export.md)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mtmm_core
from mtmm_core import plugins
from mtmm_core.cli import main as cli_main
from mtmm_core.contracts import Batch, EncoderOutput
from mtmm_core.errors import UsageError
from mtmm_core.trainer import Trainer
from small_data import SmallAVDigits, SmallDataPlugin, small_config

safetensors = pytest.importorskip("safetensors")
onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from mtmm_core.export import traced as export_module  # noqa: E402  (after the skips: it is tested with its extras)
from mtmm_core.export import export_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TORCH = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
INPUTS = ["audio", "audio.lengths", "audio.present", "image", "image.present"]


def small_run_config(*overrides: str) -> dict:
    """The default config's architecture (cnn + sequence_transformer, cross_attention, four heads), small."""
    config = small_config("train.epochs=1", "data.train_rows=128", *overrides)
    config["model"]["fusion"] = {"name": "cross_attention", "heads": 4}
    return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One trained run and its three exports (torchscript through the command line)."""
    root = tmp_path_factory.mktemp("export")
    name = plugins.register_plugin(SmallDataPlugin(), name="test-export-small-data")
    try:
        Trainer(small_run_config(), root / "run").run()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folders = {form: export_run(root / "run", format=form) for form in ("safetensors", "onnx")}
        shown = [f"{w.category.__name__}: {w.message}" for w in caught
                 if issubclass(w.category, (DeprecationWarning, torch.jit.TracerWarning))]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert cli_main(["export", str(root / "run"), "--format", "torchscript"]) == 0
        folders["torchscript"] = Path(stdout.getvalue().strip())
    finally:
        plugins.unregister_plugin(name)
    return {"run": root / "run", **folders, "cli_stderr": stderr.getvalue(), "export_warnings": shown}


@pytest.fixture(scope="module")
def model(exported):
    return mtmm_core.load_run(exported["run"]).model


@pytest.fixture(scope="module")
def validation():
    return SmallAVDigits().splits["validation"]


def fresh_inputs(split, batch_size: int, steps: int, seed: int):
    """Validation samples (the export traced test samples) with their audio padded with noise (or cut) to
    ``steps`` frames, random shorter lengths, and random absences: sample 0 lacks the image, sample 1 the
    audio (when there are 2 samples or more). An absent modality's values are NaN and its length random."""
    rng = np.random.default_rng(seed)
    batch = split.batch(rng.choice(len(split), batch_size, replace=False))
    audio = torch.randn(batch_size, steps, 13)
    given = batch.inputs["audio"][:, :steps]
    audio[:, :given.shape[1]] = given
    lengths = torch.from_numpy(rng.integers(0, batch.lengths["audio"].clamp(max=steps).numpy() + 1))
    image = batch.inputs["image"].clone()
    image_present = torch.from_numpy(rng.random(batch_size) < 0.7)
    audio_present = torch.from_numpy(rng.random(batch_size) < 0.7)
    image_present[0], audio_present[0] = False, True
    if batch_size > 1:
        image_present[1], audio_present[1] = True, False
    image_present |= ~audio_present  # every sample keeps a modality
    audio[~audio_present] = float("nan")
    image[~image_present] = float("nan")
    return ({"audio": audio, "image": image}, {"audio": lengths},
            {"audio": audio_present, "image": image_present})


def flat(inputs, lengths, present) -> dict[str, torch.Tensor]:
    return {"audio": inputs["audio"], "audio.lengths": lengths["audio"], "audio.present": present["audio"],
            "image": inputs["image"], "image.present": present["image"]}


def expected(model, inputs, lengths, present) -> dict[str, np.ndarray]:
    with torch.no_grad():
        predictions = model(inputs, lengths, present).predictions
    return {task: value.double().numpy() for task, value in predictions.items()}


CASES = [(5, 31, 1), (1, 6, 2), (13, 19, 3)]  # batch size, frames, seed; the traced batch had 4 samples


def largest_difference(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    assert list(got) == list(want)
    for task in want:
        assert got[task].shape == want[task].shape, task
    return max(float(np.abs(got[task].astype(np.float64) - want[task]).max()) for task in want)


# -- safetensors -------------------------------------------------------------------------------------------

def test_the_safetensors_folder_loads_like_the_run_without_unpickling(exported, model, validation, monkeypatch):
    folder = exported["safetensors"]
    assert folder == exported["run"] / "export-safetensors"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "export.json", "model.safetensors",
                                                        "model.yaml"]
    record = json.loads((folder / "export.json").read_text())
    assert record["format"] == "safetensors" and record["weights"] == "best.pt"
    assert record["source_run"] == str(exported["run"].resolve())
    assert record["tasks"] == ["image_digit", "audio_digit", "match", "digit_sum"]
    assert record["modalities"] == ["audio", "image"] and record["mtmm_version"] and record["torch_version"]
    assert record["files"] == ["model.safetensors", "model.yaml", "config.yaml", "export.json"]
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert len(set(modes.values())) == 1, modes  # safetensors' own file mode is not kept
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", framework="pt") as stored:
        assert "heads.digit_sum.target_mean" in stored.keys()  # buffers too

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load (pickle) must not be used for a safetensors folder")

    monkeypatch.setattr(torch, "load", no_torch_load)
    loaded = mtmm_core.load_run(folder)
    assert loaded.history == [] and loaded.test_metrics == {}
    assert loaded.config["model"]["fusion"]["name"] == "cross_attention"
    state, original = loaded.model.state_dict(), model.state_dict()
    assert list(state) == list(original) and all(torch.equal(state[k], original[k]) for k in state)
    for batch_size, steps, seed in CASES:
        case = fresh_inputs(validation, batch_size, steps, seed)
        got, want = expected(loaded.model, *case), expected(model, *case)
        assert all(np.array_equal(got[task], want[task]) for task in want)


def test_mtmm_predict_reads_a_safetensors_folder_and_writes_the_runs_predictions(exported, small_data, tmp_path):
    paths = {}
    for source in ("run", "safetensors"):
        paths[source] = tmp_path / f"{source}.npz"
        assert cli_main(["predict", str(exported[source]), "--data", "small_avdigits", "--out",
                         str(paths[source])]) == 0
    with np.load(paths["run"]) as run, np.load(paths["safetensors"]) as export:
        assert sorted(run.files) == sorted(export.files)
        assert all(np.array_equal(run[key], export[key]) for key in run.files)
    assert mtmm_core.load_run(exported["safetensors"]).evaluate() == mtmm_core.load_run(exported["run"]).evaluate()


def test_mtmm_evaluate_scores_a_safetensors_folder_as_the_run(exported, small_data, capsys):
    scores = {}
    for source in ("run", "safetensors"):
        assert cli_main(["evaluate", str(exported[source]), "--json"]) == 0
        scores[source] = json.loads(capsys.readouterr().out)
    assert scores["safetensors"] == scores["run"]


def test_the_python_example_of_the_safetensors_folder_runs(exported, small_data):
    code = python_blocks()[0].replace("runs/a", str(exported["run"]))
    namespace: dict = {}
    exec(compile(code, "docs/export.md block 0", "exec"), namespace)
    assert namespace["predictions"]["digit_sum"].shape == (128 + 192 + 192,)


# -- onnx and torchscript ------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["onnx", "torchscript"])
def test_the_traced_exports_describe_their_inputs_and_outputs(exported, form):
    folder = exported[form]
    assert folder == exported["run"] / f"export-{form}"
    file = {"onnx": "model.onnx", "torchscript": "model.pt"}[form]
    assert sorted(p.name for p in folder.iterdir()) == sorted([file, "model.yaml", "export.json"])
    record = json.loads((folder / "export.json").read_text())
    assert [(e["name"], e["dtype"], e["shape"]) for e in record["inputs"]] == [
        ("audio", "float32", ["batch", "audio_length", 13]),
        ("audio.lengths", "int64", ["batch"]),
        ("audio.present", "bool", ["batch"]),
        ("image", "float32", ["batch", 1, 8, 8]),
        ("image.present", "bool", ["batch"]),
    ]
    assert [(e["name"], e["dtype"], e["shape"]) for e in record["outputs"]] == [
        ("image_digit", "float32", ["batch", 10]), ("audio_digit", "float32", ["batch", 10]),
        ("match", "float32", ["batch"]), ("digit_sum", "float32", ["batch"])]
    checked = record["verification"]
    assert checked["batch_sizes"] == [9, 1]
    assert max(checked["max_abs_diff"].values()) < (1e-5 if form == "onnx" else 1e-6)
    assert record["files"] == [file, "model.yaml", "export.json"]
    assert record.get("onnx_opset") == (17 if form == "onnx" else None)
    if form == "onnx":
        assert [entry.version for entry in onnx.load(str(folder / file)).opset_import if entry.domain == ""] == [17]
    assert not exported["export_warnings"], exported["export_warnings"]  # torch's are hidden while exporting


def test_onnx_reproduces_the_model_on_other_batch_sizes_lengths_and_absences(exported, model, validation):
    session = onnxruntime.InferenceSession(str(exported["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == INPUTS
    assert [o.name for o in session.get_outputs()] == model.tasks
    for batch_size, steps, seed in CASES:
        case = fresh_inputs(validation, batch_size, steps, seed)
        outputs = session.run(None, {name: value.numpy() for name, value in flat(*case).items()})
        assert largest_difference(dict(zip(model.tasks, outputs)), expected(model, *case)) < 1e-5


def test_torchscript_reproduces_the_model_on_other_batch_sizes_lengths_and_absences(exported, model, validation):
    if TORCH >= (2, 13):  # docs/export.md: torch 2.13 deprecates TorchScript
        with pytest.warns(DeprecationWarning, match="jit.load"):
            loaded = torch.jit.load(str(exported["torchscript"] / "model.pt"))
    else:
        loaded = torch.jit.load(str(exported["torchscript"] / "model.pt"))
    for batch_size, steps, seed in CASES:
        case = fresh_inputs(validation, batch_size, steps, seed)
        with torch.no_grad():
            outputs = loaded(flat(*case))
        got = {task: value.numpy() for task, value in outputs.items()}
        assert largest_difference(got, expected(model, *case)) < 1e-6


def test_the_command_line_says_how_the_export_was_checked(exported):
    assert re.search(r"torchscript: checked on batches of 9 and 1 samples; largest difference from the PyTorch "
                     r"model \S+", exported["cli_stderr"])


def test_a_modality_absent_everywhere_is_not_a_modality_left_out(exported, model, validation):
    """docs/export.md: with cross_attention, audio absent for every sample differs from image alone."""
    session = onnxruntime.InferenceSession(str(exported["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs, lengths, _ = fresh_inputs(validation, 6, 12, 4)
    inputs["image"] = torch.nan_to_num(inputs["image"], nan=0.5)  # every image is present here
    present = {"audio": torch.zeros(6, dtype=torch.bool), "image": torch.ones(6, dtype=torch.bool)}
    feeds = {name: value.numpy() for name, value in flat(inputs, lengths, present).items()}
    outputs = dict(zip(model.tasks, session.run(None, feeds)))
    assert largest_difference(outputs, expected(model, inputs, lengths, present)) < 1e-5
    image_alone = expected(model, {"image": inputs["image"]}, {}, None)
    assert largest_difference(outputs, image_alone) > 1e-3


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "export.md").read_text(), flags=re.S)


def test_the_onnx_and_torchscript_examples_run_without_mtmm(exported, model, tmp_path):
    """The examples of docs/export.md run in a Python where mtmm cannot be imported, and their outputs
    are the model's."""
    onnx_code, torchscript_code = (code.replace("runs/a", str(exported["run"])) for code in python_blocks()[1:3])
    script = textwrap.dedent(f"""
        import sys
        for name in ("mtmm_core", "mtmm_plugins", "mtmm_kernels"):
            sys.modules[name] = None  # importing mtmm now fails
        import numpy as np
        saved = {{}}
        exec({onnx_code!r}, onnx_example := {{}})
        saved.update({{f"onnx:in:{{k}}": v for k, v in onnx_example["feeds"].items()}})
        saved.update({{f"onnx:out:{{k}}": v for k, v in onnx_example["outputs"].items()}})
        exec({torchscript_code!r}, torchscript_example := {{}})
        saved.update({{f"ts:in:{{k}}": v.numpy() for k, v in torchscript_example["inputs"].items()}})
        saved.update({{f"ts:out:{{k}}": v.numpy() for k, v in torchscript_example["outputs"].items()}})
        assert not [m for m, v in sys.modules.items() if m.startswith("mtmm") and v is not None]
        np.savez({str(tmp_path / "examples.npz")!r}, **saved)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "examples.npz") as saved:
        for prefix in ("onnx", "ts"):
            feeds = {name: torch.from_numpy(saved[f"{prefix}:in:{name}"]) for name in INPUTS}
            case = ({"audio": feeds["audio"], "image": feeds["image"]}, {"audio": feeds["audio.lengths"]},
                    {"audio": feeds["audio.present"], "image": feeds["image.present"]})
            got = {task: saved[f"{prefix}:out:{task}"] for task in model.tasks}
            assert largest_difference(got, expected(model, *case)) < 1e-5


def test_the_traced_batch_holds_absent_modalities_and_empty_sequences(exported, model):
    split = SmallAVDigits().splits["test"]
    signature = export_module.make_signature(model, split, "onnx")
    assert signature.names == INPUTS
    example = export_module.trace_inputs(split, signature)
    assert example["audio.present"].tolist() == [True, True, False, True]
    assert example["image.present"].tolist() == [True, False, True, False]
    lengths = example["audio.lengths"].tolist()
    assert lengths[2] == 0 and lengths[3] == 0 and min(lengths[:2]) > 0


# -- errors --------------------------------------------------------------------------------------------------

def test_bad_requests_are_usage_errors(exported, tmp_path, capsys):
    run = exported["run"]
    with pytest.raises(UsageError, match="unknown export format 'tflite'; choose one of safetensors, onnx, "
                                         "torchscript"):
        export_run(run, tmp_path / "a", "tflite")
    assert cli_main(["export", str(run), "--format", "tflite", "--out", str(tmp_path / "a")]) == 2
    assert "mtmm: error: unknown export format 'tflite'; choose one of" in capsys.readouterr().err
    with pytest.raises(UsageError, match="no such run folder"):
        export_run(tmp_path / "missing", tmp_path / "a")
    with pytest.raises(UsageError, match="is the run folder itself"):
        export_run(run, run, force=True)
    assert not (tmp_path / "a").exists()


def test_an_existing_folder_is_refused_unless_forced_and_then_only_the_exports_files_change(exported, tmp_path,
                                                                                           capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists and is not empty.*--force"):
        export_run(exported["run"], out)
    assert cli_main(["export", str(exported["run"]), "--out", str(out)]) == 2
    assert cli_main(["export", str(exported["run"]), "--out", str(out), "--force"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "export.json", "model.safetensors",
                                                     "model.yaml", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left


def test_a_missing_optional_package_says_how_to_install_it(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(UsageError, match=r"--format safetensors needs safetensors, which is not installed: "
                                         r"pip install 'mtmm\[export\]'"):
        export_run(exported["run"], tmp_path / "a")
    with pytest.raises(UsageError, match=r"needs the safetensors package to be read: pip install 'mtmm\[export\]'"):
        mtmm_core.load_run(exported["safetensors"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UsageError, match=r"--format onnx needs onnxruntime, which is not installed: pip install"):
        export_run(exported["run"], tmp_path / "b", "onnx")


def test_a_failed_check_names_the_task_and_leaves_the_folder_as_it_was(exported, small_data, tmp_path, monkeypatch):
    real = export_module._torchscript_runner

    def off_by_a_little(path, tasks):
        run = real(path, tasks)
        return lambda feeds: [value + 1e-3 * (task == "match") for task, value in zip(tasks, run(feeds))]

    monkeypatch.setattr(export_module, "_torchscript_runner", off_by_a_little)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"the torchscript export does not reproduce the model: task 'match' differs "
                                         r"by 0\.001 on a batch of 9 samples.*--format safetensors"):
        export_run(exported["run"], out, "torchscript", force=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("kind, value", [("list", lambda n: ["a caption"] * n),
                                         ("dict", lambda n: {"numeric": torch.zeros(n, 3)})])
def test_a_modality_that_is_not_a_tensor_cannot_be_traced(model, kind, value):
    class Split:
        def __len__(self):
            return 4

        def batch(self, rows):
            return Batch(inputs={"audio": torch.zeros(len(rows), 5, 13), "image": value(len(rows))},
                         lengths={"audio": torch.full((len(rows),), 5)}, targets={})

    with pytest.raises(UsageError, match=rf"--format onnx takes tensor inputs only, but modality 'image' \(encoder "
                                         rf"'cnn'.*\) takes a {kind}; export this run with --format safetensors"):
        export_module.make_signature(model, Split(), "onnx")


class ErfinvEncoder(nn.Module):
    """An image encoder using torch.erfinv, which has no ONNX conversion."""

    def __init__(self, *, dim: int = 128):
        super().__init__()
        self.out_dim = dim
        self.linear = nn.Linear(64, dim)

    def forward(self, images, lengths=None):
        tokens = torch.erfinv(0.5 * torch.tanh(self.linear(images.flatten(1))))[:, None, :]
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))


class ErfinvPlugin:
    @mtmm_core.hookimpl
    def register_encoders(self, register):
        register("erfinv_test", ErfinvEncoder)


def test_an_operator_without_onnx_conversion_names_the_component(small_data, tmp_path):
    name = plugins.register_plugin(ErfinvPlugin(), name="test-erfinv")
    try:
        config = small_run_config("data.train_rows=64")
        config["model"]["encoders"]["image"] = {"name": "erfinv_test"}
        Trainer(config, tmp_path / "run").run()
        with pytest.raises(UsageError, match=r"the model cannot be exported to ONNX: encoder 'erfinv_test' .*of "
                                             r"modality 'image' uses the operator aten::erfinv, which has no ONNX "
                                             r"conversion \(opset 17\); export this run with --format safetensors "
                                             r"or --format torchscript"):
            export_run(tmp_path / "run", format="onnx")
        assert not (tmp_path / "run" / "export-onnx").exists()
        folder = export_run(tmp_path / "run", format="torchscript")
        checked = json.loads((folder / "export.json").read_text())["verification"]
        assert max(checked["max_abs_diff"].values()) < 1e-6
        assert (export_run(tmp_path / "run") / "model.safetensors").is_file()
    finally:
        plugins.unregister_plugin(name)


@pytest.mark.skipif(TORCH < (2, 13), reason="docs/export.md states what torch 2.13 does")
def test_torch_export_captures_the_sync_free_model_and_torch_2_13_deprecates_the_legacy_exporter(
        exported, model, tmp_path):
    """docs/export.md: the model skips its value checks under torch.export (issue 12), so the dynamo-based
    exporter captures it; mtmm still ships the TorchScript-based exporter, which torch 2.13 deprecates."""
    split = SmallAVDigits().splits["test"]
    signature = export_module.make_signature(model, split, "onnx")
    example = tuple(export_module.trace_inputs(split, signature).values())
    wrapper = export_module.FlatModel(model, signature).eval()
    program = torch.export.export(wrapper, example)
    for have, want in zip(program.module()(*example), wrapper(*example)):
        torch.testing.assert_close(have, want)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(nn.Linear(2, 2), (torch.zeros(1, 2),), str(tmp_path / "legacy.onnx"), dynamo=False)
        torch.jit.save(torch.jit.trace(nn.Linear(2, 2), (torch.zeros(1, 2),)), str(tmp_path / "linear.pt"))
    deprecations = " ".join(str(w.message) for w in caught if issubclass(w.category, DeprecationWarning))
    for deprecated in ("legacy TorchScript-based ONNX export", "`torch.jit.trace` is deprecated",
                       "`torch.jit.save` is deprecated"):
        assert deprecated in deprecations
