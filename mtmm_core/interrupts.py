"""Ctrl-C and SIGTERM stop training at a step boundary, after a checkpoint that resumes exactly.

While :class:`StopSignals` is active, SIGINT and SIGTERM (what schedulers, ``timeout`` and
``torchrun`` send) only set ``received``. The training loop reads it when a step is over,
saves ``last.pt`` (weights, optimiser, scheduler, weighting, RNG and data position all at
that boundary) and raises :class:`TrainingInterrupted`; the command exits 130 (SIGINT) or
143 (SIGTERM). A second signal:

* while the checkpoint is being written, waits for it (the write is never cut short);
* otherwise, more than a second after the first, stops at once without saving this
  step (``KeyboardInterrupt``); the previous checkpoint stays as it was. Under
  ``torchrun`` it is ignored instead: the launcher passes a terminal's Ctrl-C on to the
  workers, which already got it, and ends them with SIGKILL after its own grace period.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on ``signal_number`` after saving a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, signal_number: int, message: str):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number

    def __str__(self) -> str:
        return str(self.args[0])


class StopSignals:
    """A context manager: SIGINT/SIGTERM set ``received`` (the signal's number) instead of stopping.

    ``distributed`` (several processes) makes a repeated signal wait instead of stopping at once.
    Handlers are installed only in the main thread; elsewhere the context does nothing.
    """

    def __init__(self, distributed: bool = False, announce: bool = True, stop_now: str | None = None):
        self.received: int | None = None
        self.distributed, self.announce, self.stop_now = distributed, announce, stop_now
        self._saving, self._first_at = False, 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in HANDLED}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame: object) -> None:
        name = signal.Signals(number).name
        if self.stop_now is not None:  # nothing left to save: stop at once, saying why that is safe
            raise TrainingInterrupted(number, f"{name}: {self.stop_now}")
        if self.received is None:
            self.received, self._first_at = number, time.monotonic()
            if self.announce:
                later = ("" if self.distributed else
                         "; signal again (Ctrl-C) to stop at once without saving this step")
                print(f"\n{name}: stopping after this step to save a checkpoint{later}", file=sys.stderr, flush=True)
            return
        if self._saving:
            print(f"\n{name}: still writing the checkpoint; stopping right after it", file=sys.stderr, flush=True)
            return
        if self.distributed or time.monotonic() - self._first_at < 1.0:
            return  # the same request, passed on by a launcher, or a key held down
        raise KeyboardInterrupt

    @contextmanager
    def saving(self) -> Iterator[None]:
        """Within this block a repeated signal waits instead of stopping the process."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
