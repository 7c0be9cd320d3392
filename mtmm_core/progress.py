"""What a run prints while it trains: a header, a live progress bar per epoch, and a summary per epoch.

Everything goes to stderr and fits the terminal's width (80 columns included). The live bar is
tqdm's (the ``progress`` extra), shown only when stderr is a terminal and ``train.progress`` is on;
elsewhere (a log file, a pipe, CI) a run prints plain lines: the header and one summary per epoch.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Any, TextIO

import torch

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} eta {remaining}{postfix}"
MIN_BAR = 10  # columns the bar itself keeps, however narrow the terminal


def terminal_width(stream: TextIO | None = None) -> int:
    """Columns of the terminal ``stream`` (default: stderr) writes to; 80 when it is not a terminal."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return 80
    return shutil.get_terminal_size((80, 24)).columns


def _tqdm_class() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


_hinted = False


class EpochProgress:
    """The live bar of one epoch: samples done, percent, ETA, samples/s and the running loss.

    Shown on a terminal when tqdm is installed (otherwise a one-time hint to install it); a no-op
    when ``enabled`` is false or stderr is not a terminal. ``update`` takes the samples of the step
    (all processes together) and the running mean loss of each task, or None to keep the losses shown
    (the trainer reads them from the device only every ``train.log_every`` steps).
    """

    def __init__(self, enabled: bool, label: str, total: int, done: int = 0, stream: TextIO | None = None):
        global _hinted
        self.bar = None
        self.stream = stream = stream or sys.stderr
        if not (enabled and stream.isatty()):
            return
        tqdm = _tqdm_class()
        if tqdm is None:
            if not _hinted:
                print("(pip install 'mtmm[progress]' for a live progress bar)", file=stream)
                _hinted = True
            return
        self.started, self.first = time.perf_counter(), done
        self.bar = tqdm(total=total, initial=done, desc=label, unit=" samples", dynamic_ncols=True,
                        leave=False, file=stream, bar_format=BAR_FORMAT, mininterval=0.2)
        self.losses: dict[str, float] = {}

    def update(self, samples: int, losses: dict[str, float] | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(samples)
        self.losses = self.losses if losses is None else losses
        losses = self.losses
        seconds = max(time.perf_counter() - self.started, 1e-9)
        rate = f"{(self.bar.n - self.first) / seconds:.0f} samples/s"
        if not losses:
            self.bar.set_postfix_str(rate, refresh=False)
            return
        total = f"loss {sum(losses.values()):.3f}"
        per_task = " (" + " ".join(f"{task} {value:.3f}" for task, value in losses.items()) + ")"
        fixed = len(self.bar.desc) + len(" 100%||") + 2 * len(str(self.bar.total)) + len(" / eta 00:00, ")
        room = terminal_width(self.stream) - fixed - MIN_BAR - len(rate) - len(total) - 4
        self.bar.set_postfix_str(f"{rate}, {total}{per_task if len(per_task) <= room else ''}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def wrap_items(items: list[str], width: int, first: str = "", indent: str = "    ", separator: str = "  ") -> list[str]:
    """``first`` and a space, then ``items`` joined with ``separator``, in lines of at most ``width`` columns
    that break only between items (an item wider than a line gets a line of its own)."""
    lines, line = [], first
    for item in items:
        gap = " " if first and line == first else separator if line.strip() else ""
        joined = f"{line}{gap}{item}"
        if len(joined) <= width or not line.strip():
            line = joined
        else:
            lines.append(line)
            line = indent + item
    return lines + [line]


def _format(value: float) -> str:
    """A metric as the test table prints it: 4 decimals (0.7000, 3.0290); 4 significant digits past 1000."""
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def epoch_summary(epoch: int, epochs: int, train_losses: dict[str, float], validation: dict[str, float],
                  monitor: str, improved: bool, seconds: float, width: int = 80) -> str:
    """An epoch's result in lines of at most ``width`` columns:

    ``epoch 3/20 (12.1 s)  train loss 4.5210  validation loss 4.6100  (best so far)`` and then, per task, its
    validation loss and metrics (tasks wrapped to the width, never split across lines).
    """
    head = [f"epoch {epoch}/{epochs} ({seconds:.1f} s)", f"train loss {_format(sum(train_losses.values()))}",
            f"validation {monitor} {_format(validation[monitor])}", *(["(best so far)"] if improved else [])]
    groups: dict[str, list[str]] = {}
    for key, value in validation.items():
        task, _, metric = key.rpartition(".")
        if task:
            groups.setdefault(task, []).append(f"{metric} {_format(value)}")
    lines = wrap_items(head, width)
    for task, items in groups.items():
        lines.extend(wrap_items(items, width, first=f"  {task}:", indent="    "))
    return "\n".join(lines)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable ones) of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_header(*, out_dir: Any, device: Any, threads: int, processes: int, data_name: str,
               split_sizes: dict[str, int], model_spec: dict[str, Any], model: torch.nn.Module,
               settings: Any, steps_per_epoch: int, width: int = 80) -> str:
    """The one screen a run prints before it trains: where it writes, on what, with what data and model,
    and how each task's loss is measured (so the numbers below can be read without the source)."""
    total, trainable = count_parameters(model)
    frozen = f" ({total - trainable:,} frozen)" if trainable < total else ""
    processes_text = f", {processes} processes" if processes > 1 else ""
    encoders = ", ".join(f"{m} {_name(e)}" for m, e in model_spec["encoders"].items())
    splits = ", ".join(f"{name} {size:,}" for name, size in split_sizes.items())
    threads_text = f"{threads} CPU thread{'s' if threads > 1 else ''} per process (train.threads)"
    schedule = [f"schedule: {settings.epochs} epochs", f"{steps_per_epoch} steps x {settings.batch_size} samples",
                f"lr {settings.lr:g}", f"best epoch by validation {settings.monitor}"]
    if settings.patience:
        schedule.append(f"early stop after {settings.patience} epochs without improvement")
    wrapped = [
        *wrap_items([f"run folder {out_dir}", f"device {device}{processes_text}", threads_text], width),
        *wrap_items([f"data: {data_name} ({splits} samples)"], width),
        *wrap_items([f"model: {total:,} parameters{frozen};", f"encoders {encoders};",
                     f"fusion {_name(model_spec['fusion'])};",
                     f"weighting {_name(model_spec.get('weighting', 'equal'))}"], width, separator=" "),
        *wrap_items(schedule, width, separator=", "),
        "tasks (train and validation losses as the model optimises them):",
    ]
    for task, head in model.heads.items():
        wrapped.extend(wrap_items(_loss_meaning(head), width, first=f"  {task}:", separator=" "))
    return "\n".join(wrapped)


def _name(entry: Any) -> str:
    """A spec entry's component name: ``{name: gated, ...}`` or the short form ``gated``."""
    return str(entry.get("name")) if isinstance(entry, dict) else str(entry)


def _loss_meaning(head: Any) -> list[str]:
    """How a head's loss relates to its metrics, in phrases that a line may not break."""
    kind = head.loss_kind
    if hasattr(head, "target_scale"):  # a regression head: trained on standardised targets
        mean, std = float(head.target_mean), float(head.target_scale)
        relation = {"l1": f"loss x {std:.4g} = mae", "mse": f"loss x {std:.4g}^2 = rmse^2"}.get(kind)
        return [f"{kind} on standardised targets", f"((y - {mean:.4g}) / {std:.4g});", "mae and rmse are",
                "in the target's own units" + (":" if relation else ""), *([relation] if relation else [])]
    if kind == "cross_entropy" and hasattr(head, "num_classes"):
        return [f"cross-entropy of the {head.num_classes} class logits", "(a uniform guess scores",
                f"ln {head.num_classes} = {math.log(head.num_classes):.3f})"]
    if kind == "bce":
        return ["binary cross-entropy of the logits", "(a 50/50 guess scores", "ln 2 = 0.693)"]
    return [f"the {kind} loss"]
