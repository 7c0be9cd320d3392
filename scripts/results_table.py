"""Train every shipped config on avdigits and write the README's results table.

    python scripts/results_table.py [--configs default gated ...] [--out-dir runs/results]

Writes ``benchmarks/results/avdigits_configs.json`` (runs of configs not named this time are
kept) and replaces the table between the ``<!-- results:start -->`` and
``<!-- results:end -->`` markers in README.md.
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
    args = parser.parse_args()
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
    lines = ["| config | " + " | ".join(label for _, label in COLUMNS) + " | epochs | train time |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for row in rows:
        cells = [f"{row['metrics'][key]:.3f}" for key, _ in COLUMNS]
        lines.append(f"| `{row['config']}` | " + " | ".join(cells) + f" | {row['epochs']} | {row['seconds']:.0f} s |")
    table = "\n".join(lines) + f"\n\nTest split of avdigits, seed 0, on {machine}; `python scripts/results_table.py`.\n"
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- results:start -->\n", "<!-- results:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        readme.write_text(head + start + table + end + rest.split(end, 1)[1])
    print(table)


if __name__ == "__main__":
    main()
