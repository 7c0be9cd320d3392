"""A training run for tests/test_distributed.py: one process, or one rank under torchrun.

``python tests/distributed_worker.py OUT_DIR [--resume] [--stop-after-epoch E] [KEY=VALUE ...]`` trains
the small avdigits (tests/small_data.py) with a small model and writes, from rank 0,
``OUT_DIR/steps.json``: each step's per-task training losses, read from the trainer's epoch sums
after every step (the global means every rank feeds its weighting).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mtmm_core import plugins  # noqa: E402
from mtmm_core.trainer import Trainer  # noqa: E402
from small_data import SmallDataPlugin, small_config  # noqa: E402


class Stop(Exception):
    """Ends the run after an epoch's checkpoint, as a crash there would."""


def main(argv: list[str]) -> int:
    out_dir, resume, stop_after, overrides = Path(argv[0]), False, None, []
    arguments = iter(argv[1:])
    for argument in arguments:
        if argument == "--resume":
            resume = True
        elif argument == "--stop-after-epoch":
            stop_after = int(next(arguments))
        else:
            overrides.append(argument)
    plugins.register_plugin(SmallDataPlugin(), name="test-small-data")
    config = small_config("model.modality_dropout=0.0", "train.threads=1", *overrides)

    def stop(record: dict) -> None:
        if stop_after is not None and record["epoch"] >= stop_after:
            raise Stop()

    trainer = Trainer(config, out_dir, resume=resume, on_epoch_end=stop)
    steps: list[list[float]] = []
    original = Trainer._step

    def recorded(self: Trainer, batch) -> None:
        before = self.epoch_loss_sums.clone()
        original(self, batch)
        steps.append((self.epoch_loss_sums - before).tolist())

    Trainer._step = recorded  # type: ignore[method-assign]
    try:
        metrics = trainer.run()
    except Stop:
        metrics = None
    if trainer.context.is_main:
        (out_dir / "steps.json").write_text(json.dumps({"steps": steps, "test": metrics,
                                                        "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
