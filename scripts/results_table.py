"""Train every shipped config on avdigits and write the README's results table.

    python scripts/results_table.py [--configs default gated ...] [--out-dir runs/results]
    python scripts/results_table.py --weightings [pcgrad mgda ...] [--epochs 10]

Writes ``benchmarks/results/avdigits_configs.json`` (runs of configs not named this time are
kept) and replaces the table between the ``<!-- results:start -->`` and
``<!-- results:end -->`` markers in README.md.

``--weightings`` trains the default config once per weighting (``model.weighting.name=X``,
every built-in one when no name is given) for ``--epochs`` epochs, and writes
``benchmarks/results/avdigits_weightings.json`` and the table between
``<!-- weightings:start -->`` and ``<!-- weightings:end -->`` in docs/weightings.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from mtmm_core.config import CONFIG_DIR, load_config
from mtmm_core.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [("image_digit.accuracy", "image_digit acc"), ("audio_digit.accuracy", "audio_digit acc"),
           ("match.accuracy", "match acc"), ("digit_sum.mae", "digit_sum MAE")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "results"))
    parser.add_argument("--weightings", nargs="*", default=None, help="one run of the default per weighting")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per weighting run (with --weightings)")
    args = parser.parse_args()
    if args.weightings is not None:
        weightings_table(args.weightings, args.epochs, Path(args.out_dir))
        return
    rows = []
    for name in args.configs:
        run_dir = Path(args.out_dir) / name
        shutil.rmtree(run_dir, ignore_errors=True)
        config = load_config(name, ["train.progress=false"])
        started = time.time()
        with contextlib.redirect_stderr(io.StringIO()):
            metrics = Trainer(config, run_dir).run()
        seconds = time.time() - started
        epochs = len((run_dir / "metrics.jsonl").read_text().splitlines())
        rows.append({"config": name, "seconds": round(seconds, 1), "epochs": epochs, "metrics": metrics})
        print(name, f"{seconds:.0f} s", {key: round(metrics[key], 4) for key, _ in COLUMNS}, flush=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    out = ROOT / "benchmarks" / "results" / "avdigits_configs.json"
    earlier = json.loads(out.read_text())["runs"] if out.is_file() else []
    rerun = {row["config"] for row in rows}
    rows = sorted([row for row in earlier if row["config"] not in rerun] + rows, key=lambda row: row["config"])
    out.write_text(json.dumps({"machine": machine, "runs": rows}, indent=2))
    table = markdown_table(rows, "config") + (
        f"\n\nTest split of avdigits, seed 0, on {machine}; `python scripts/results_table.py`.\n")
    replace_between_markers(ROOT / "README.md", "results", table)
    print(table)


def markdown_table(rows: list[dict], first: str) -> str:
    """One line per run: its ``first`` field, the metrics of ``COLUMNS``, epochs and train time."""
    lines = [f"| {first} | " + " | ".join(label for _, label in COLUMNS) + " | epochs | train time |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for row in rows:
        cells = [f"{row['metrics'][key]:.3f}" for key, _ in COLUMNS]
        lines.append(f"| `{row[first]}` | " + " | ".join(cells) + f" | {row['epochs']} | {row['seconds']:.0f} s |")
    return "\n".join(lines)


def replace_between_markers(path: Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``."""
    content = path.read_text()
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    if start in content and end in content:
        head, rest = content.split(start, 1)
        path.write_text(head + start + text + end + rest.split(end, 1)[1])


#: Parameters a weighting needs beyond its name in the default's four tasks.
WEIGHTING_PARAMS = {"static": ["model.weighting.weights=[1.0, 1.0, 1.0, 1.0]"]}


def weightings_table(names: list[str], epochs: int, out_dir: Path) -> None:
    """Train the default once per weighting; write the JSON and the table in docs/weightings.md."""
    from mtmm_plugins.weightings import BUILTIN_WEIGHTINGS

    out = ROOT / "benchmarks" / "results" / "avdigits_weightings.json"
    earlier = json.loads(out.read_text())["runs"] if out.is_file() else []
    rows = []
    for name in names or list(BUILTIN_WEIGHTINGS):
        run_dir = out_dir / f"weighting-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = ["train.progress=false", f"train.epochs={epochs}", f"model.weighting.name={name}",
                     *WEIGHTING_PARAMS.get(name, [])]
        started = time.time()
        with contextlib.redirect_stderr(io.StringIO()):
            metrics = Trainer(load_config("default", overrides), run_dir).run()
        seconds = time.time() - started
        rows.append({"weighting": name, "epochs": epochs, "seconds": round(seconds, 1), "metrics": metrics})
        print(name, f"{seconds:.0f} s", {key: round(metrics[key], 4) for key, _ in COLUMNS}, flush=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    rerun = {row["weighting"] for row in rows}
    order = list(BUILTIN_WEIGHTINGS)
    rows = sorted([row for row in earlier if row["weighting"] not in rerun] + rows,
                  key=lambda row: order.index(row["weighting"]) if row["weighting"] in order else len(order))
    out.write_text(json.dumps({"machine": machine, "runs": rows}, indent=2))
    table = markdown_table(rows, "weighting") + (
        f"\n\nThe default config with `model.weighting.name=X`, {epochs} epochs (the default trains 50), test "
        f"split, seed 0, on {machine}; `python scripts/results_table.py --weightings --epochs {epochs}`.\n")
    replace_between_markers(ROOT / "docs" / "weightings.md", "weightings", table)
    print(table)


if __name__ == "__main__":
    main()
