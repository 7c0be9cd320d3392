"""`mtmm plot` draws a run's log, `mtmm evaluate --plot` its confusion matrices on the test split."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from mtmm_core import plugins
from mtmm_core.cli import main as cli_main
from mtmm_core.contracts import Batch
from mtmm_core.evaluation import ClassLabels, is_better
from mtmm_core.confusion import confusion_matrices
from mtmm_core.plot import best_epoch, plot_run, read_log, training_figure
from small_data import FewRows, SmallDataPlugin, small_config

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402


def write_log(run_dir, epochs: int = 4) -> None:
    lines = []
    for epoch in range(1, epochs + 1):
        lines.append(json.dumps({
            "epoch": epoch,
            "train": {"digit": random.random(), "sum": random.random()},
            "validation": {"digit.accuracy": random.random(), "digit.loss": 1.0, "sum.mae": random.random(), "loss": 2.0},
            "task_weights": {"digit": random.random(), "sum": random.random()},
        }))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


# accuracy best at 3 (its tie at 5 does not count), mae best at 2 (lower is better), loss best at 5
HAND_LOG = {
    "digit.accuracy": [0.2, 0.6, 0.8, 0.7, 0.8],
    "digit.macro_f1": [0.1, 0.5, 0.7, 0.6, 0.75],
    "sum.mae": [3.0, 1.0, 2.0, 1.5, 1.0],
    "sum.rmse": [4.0, 1.5, 2.5, 2.0, 1.4],
    "sum.r2": [-0.4, 0.5, 0.3, 0.4, 0.6],
    "sum.hit_rate": [0.1, 0.2, 0.3, 0.4, 0.5],  # a plugin's metric in [0, 1]
    "sum.spread": [40.0, 30.0, 20.0, 25.0, 10.0],  # a plugin's metric beyond [0, 1]
    "loss": [5.0, 4.0, 3.0, 3.5, 2.5],
}


def write_hand_log(run_dir, monitor: str | None = None) -> list[dict]:
    records = []
    for index in range(5):
        validation = {key: values[index] for key, values in HAND_LOG.items()}
        validation.update({"digit.loss": 2.0 / (index + 1), "sum.loss": 1.0 / (index + 1)})
        records.append({"epoch": index + 1, "lr": 0.001,
                        "train": {"digit": 1.5 / (index + 1), "sum": 0.9 / (index + 1)},
                        "validation": validation, "task_weights": {"digit": 1.0, "sum": 1.0 + index / 10}})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    if monitor is not None:
        (run_dir / "config.yaml").write_text(f"data: {{name: avdigits}}\ntrain:\n  monitor: {monitor}\n")
    return records


def panels(figure) -> dict:
    """The titled Axes of a figure by title (twin axes have no title of their own)."""
    return {axis.get_title(): axis for axis in figure.axes if axis.get_title()}


def best_lines(axis) -> list:
    return [line for line in axis.get_lines() if line.get_label().startswith("best epoch")]


def test_plot_writes_a_png(tmp_path):
    write_log(tmp_path)
    out = plot_run(tmp_path)
    assert out == tmp_path / "training.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_of_a_folder_without_a_log_says_what_is_missing(tmp_path, capsys):
    assert cli_main(["plot", str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("tasks, epochs", [(1, 1), (2, 4), (6, 3)])
def test_the_figure_has_a_loss_and_a_metrics_panel_per_task_and_two_summary_panels(tmp_path, capsys, tasks, epochs):
    names = [f"task{i}" for i in range(tasks)]
    lines = [json.dumps({"epoch": epoch, "train": {t: 1.0 / epoch for t in names},
                         "validation": {**{f"{t}.loss": 1.2 / epoch for t in names},
                                        **{f"{t}.accuracy": 0.5 + epoch / 20 for t in names}, "loss": 2.0 / epoch},
                         "task_weights": {t: 1.0 for t in names}})
             for epoch in range(1, epochs + 1)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    figure = training_figure(read_log(tmp_path))
    try:
        expected = ["total loss (sum over tasks)", "task weights"]
        for task in names:
            expected += [f"{task}: loss", f"{task}: validation metrics"]
        assert list(panels(figure)) == expected
        for title, axis in panels(figure).items():
            assert [line.get_xdata()[0] for line in best_lines(axis)] == [epochs], title  # loss falls: the last epoch
        width, height = figure.get_size_inches()
        assert width <= 14 and height <= 16  # readable on a laptop screen without zooming out
    finally:
        plt.close(figure)
    assert cli_main(["plot", str(tmp_path), "--out", str(tmp_path / "figure")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000


@pytest.mark.parametrize("monitor, expected", [("digit.accuracy", 3), ("sum.mae", 2), ("loss", 5), ("sum.r2", 5)])
def test_the_best_epoch_line_is_where_is_better_puts_the_monitored_metric(tmp_path, monkeypatch, monitor, expected):
    records = write_hand_log(tmp_path, monitor)
    best = None
    for record in records:  # the trainer's rule, applied by hand
        if is_better(monitor, record["validation"][monitor], best):
            best, reference = record["validation"][monitor], record["epoch"]
    assert reference == expected and best_epoch(records, monitor) == (expected, best)

    import mtmm_core.plot

    drawn = []

    def keep(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    original = mtmm_core.plot.training_figure
    monkeypatch.setattr(mtmm_core.plot, "training_figure", keep)
    plot_run(tmp_path)  # reads train.monitor from config.yaml
    titled = panels(drawn[0])
    assert len(titled) == 6
    for title, axis in titled.items():
        lines = best_lines(axis)
        assert len(lines) == 1 and list(lines[0].get_xdata()) == [expected, expected], title
        assert lines[0].get_label() == f"best epoch {expected}"
        assert f"best epoch {expected}" in [text.get_text() for text in axis.get_legend().get_texts()]
    summary = "total loss (sum over tasks)" if monitor == "loss" else f"total loss and monitored {monitor}"
    assert summary in titled
    assert f"best epoch {expected} by validation {monitor}" in drawn[0].get_suptitle()


def test_metrics_of_different_families_are_on_different_axes(tmp_path):
    records = write_hand_log(tmp_path)
    figure = training_figure(records)
    try:
        axis_of = {}
        for axis in figure.axes:
            for line in axis.get_lines():
                axis_of[line.get_label().removesuffix(" (right axis)")] = axis
        # scores up to 1 together (a plugin's metric whose values all lie in [0, 1] with them) ...
        assert axis_of["r2"] is axis_of["hit_rate"]
        assert axis_of["r2"].get_ylabel() == "score (at most 1)"
        # ... errors in the target's units together, a plugin's unbounded metric on a third axis
        assert axis_of["mae"] is axis_of["rmse"] and axis_of["mae"].get_ylabel() == "error (target units)"
        assert len({id(axis_of[name]) for name in ("r2", "mae", "spread")}) == 3
        assert axis_of["accuracy"] is axis_of["macro_f1"] is panels(figure)["digit: validation metrics"]
        assert axis_of["r2"] is panels(figure)["sum: validation metrics"]
        # losses on a log scale, apart from the metrics; validation loss beside the training loss
        loss_axis = panels(figure)["sum: loss"]
        assert loss_axis.get_yscale() == "log"
        assert {line.get_label() for line in loss_axis.get_lines()} == {"train", "validation", "best epoch 5"}
        assert "validation" not in {line.get_label() for line in axis_of["mae"].get_lines()}
    finally:
        plt.close(figure)


def test_binary_heads_get_a_two_by_two_matrix_per_label():
    true = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1]])
    predicted = np.array([[1, 1, 1], [0, 0, 0], [0, 1, 0], [0, 1, 1]])
    single = ClassLabels("cross_entropy", np.array([0, 2, 2, 1, 2]), np.array([0, 2, 1, 1, 0]), 3)
    matrices = confusion_matrices({"tags": ClassLabels("bce", true, predicted, 2), "kind": single})
    assert [m.title for m in matrices] == ["tags, label 0", "tags, label 1", "tags, label 2", "kind"]
    assert matrices[0].counts.tolist() == [[2, 0], [1, 1]]  # rows true 0/1, columns predicted 0/1
    assert matrices[1].counts.tolist() == [[1, 1], [0, 2]]
    assert matrices[2].counts.tolist() == [[1, 0], [1, 2]]
    assert matrices[3].counts.tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 1]]


# -- mtmm evaluate --plot on a tiny trained run -----------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One epoch on 128 avdigits samples: image_digit and audio_digit (10 classes), match (binary), digit_sum."""
    from mtmm_core.trainer import Trainer

    run = tmp_path_factory.mktemp("plot") / "run"
    name = plugins.register_plugin(SmallDataPlugin(), name="test-plot-small-data")
    try:
        Trainer(small_config("train.epochs=1", "data.train_rows=128", "train.threads=1"), run).run()
    finally:
        plugins.unregister_plugin(name)
    return run


def unlabel_some_samples(monkeypatch):
    """image_digit unlabelled (task mask) on every 3rd row, match on every 4th; audio_digit -100 on every 5th."""
    original = FewRows.batch

    def batch(self, rows):
        full = original(self, rows)
        rows = torch.as_tensor(np.asarray(rows))
        targets = dict(full.targets)
        targets["audio_digit"] = torch.where(rows % 5 == 0, -100, targets["audio_digit"])
        masks = {"image_digit": rows % 3 != 0, "match": rows % 4 != 0}
        return Batch(full.inputs, full.lengths, targets, full.present, masks)

    monkeypatch.setattr(FewRows, "batch", batch)


def reference_counts(run, modalities=None) -> dict[str, np.ndarray]:
    """Counts from predict_arrays (no masks) and the test split's targets, masked by the rule above by hand."""
    from mtmm_core.config import read_run_config
    from mtmm_core.data import load_dataset
    from mtmm_core.predict import load_trained_model, predict_arrays

    dataset = load_dataset(read_run_config(run)["data"])
    arrays = predict_arrays(load_trained_model(run), dataset, modalities=modalities)
    test = arrays["split"] == "test"
    rows = arrays["row"][test]
    split = dataset.splits["test"]
    targets = split.batch(np.arange(len(split))).targets
    counts = {}
    for task, keep, classes in [("image_digit", rows % 3 != 0, 10), ("audio_digit", rows % 5 != 0, 10),
                                ("match", rows % 4 != 0, 2)]:
        if task == "match":
            predicted = (arrays[task][test] > 0).astype(int)
        else:
            predicted = arrays[f"{task}.label"][test]
        true = targets[task].numpy()[rows].astype(int)
        matrix = np.zeros((classes, classes), dtype=int)
        for t, p in zip(true[keep], predicted[keep]):
            matrix[t, p] += 1
        counts[task] = matrix
    return counts


def drawn_counts(figure) -> dict[str, np.ndarray]:
    """The counts written in each panel's cells, by task."""
    counts = {}
    for axis in figure.axes:
        if axis.get_xlabel() != "predicted":
            continue
        numbers = [int(text.get_text()) for text in axis.texts]
        size = int(round(len(numbers) ** 0.5))
        counts[axis.get_title().splitlines()[0]] = np.array(numbers).reshape(size, size)
    return counts


@pytest.mark.parametrize("modalities", [None, "image"])
def test_evaluate_plot_draws_the_confusion_matrices_of_the_labelled_test_samples(trained_run, small_data, monkeypatch,
                                                                                capsys, modalities):
    import mtmm_core.confusion

    unlabel_some_samples(monkeypatch)
    drawn = []
    original = mtmm_core.confusion.confusion_figure

    def keep(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(mtmm_core.confusion, "confusion_figure", keep)
    out = trained_run / f"confusion-{modalities}.png"
    extra = ["--modalities", modalities, "--json"] if modalities else []
    assert cli_main(["evaluate", str(trained_run), "--plot", str(out), *extra]) == 0
    printed = capsys.readouterr()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if modalities:  # stdout stays JSON; the path goes to stderr
        metrics = json.loads(printed.out)
        assert f"confusion matrices: {out}" in printed.err
    else:
        assert printed.out.rstrip().endswith(f"confusion matrices: {out}")
    reference = reference_counts(trained_run, [modalities] if modalities else None)
    drawn_matrices = drawn_counts(drawn[0])
    assert set(drawn_matrices) == {"image_digit", "audio_digit", "match"}  # not the regression task
    for task, counts in reference.items():
        assert drawn_matrices[task].tolist() == counts.tolist(), task
    assert reference["image_digit"].sum() == 128 and reference["match"].sum() == 144  # 192 test rows, masked
    if modalities:  # the matrices' accuracy is evaluate's where both count the same samples
        for task in ("image_digit", "match"):
            assert np.trace(reference[task]) / reference[task].sum() == pytest.approx(metrics[f"{task}.accuracy"])
    for axis in drawn[0].axes:
        if axis.get_xlabel() == "predicted":
            assert axis.get_ylabel() == "true"
            shares = axis.images[0].get_array()
            assert np.allclose(shares.sum(axis=1)[rows_with_samples(axis)], 1.0)  # colours: rows normalised


def rows_with_samples(axis) -> np.ndarray:
    """The rows of a panel that hold at least one sample."""
    numbers = np.array([int(text.get_text()) for text in axis.texts])
    size = int(round(len(numbers) ** 0.5))
    return numbers.reshape(size, size).sum(axis=1) > 0


def test_evaluate_plot_default_path_and_a_bad_format(trained_run, small_data, capsys):
    assert cli_main(["evaluate", str(trained_run), "--plot", str(trained_run / "x.bogus")]) == 2
    assert "--plot" in capsys.readouterr().err and not (trained_run / "x.bogus").exists()
    assert cli_main(["evaluate", str(trained_run), "--plot"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"confusion matrices: {trained_run / 'confusion.png'}")
    assert (trained_run / "confusion.png").stat().st_size > 10_000
