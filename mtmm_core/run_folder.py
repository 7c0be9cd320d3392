"""A run folder that one process owns and that changes one whole epoch at a time.

The folder's files (``config.yaml``, ``model.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt``)
describe the same moment of training, whatever happens to the process:

* **Ownership.** :meth:`RunFolder.lock` holds an exclusive ``flock`` on ``.lock`` (which records
  the pid and host) for the run. A second writer, or a resume of a live run, is refused
  with the owner's pid; a lock left by a dead process is taken over (the kernel drops a
  dead process's ``flock``).
* **One commit per epoch.** :meth:`RunFolder.commit_epoch` writes the new best weights to
  ``best.pt.pending``, appends the epoch's line to ``metrics.jsonl``, then renames a fully
  written ``last.pt`` into place: that rename is the commit. Only then does
  ``best.pt.pending`` become ``best.pt``. ``last.pt`` carries the epoch's log line and the
  epoch of its best weights, so :meth:`RunFolder.recover` (on every start and resume)
  can finish or undo an interrupted commit: log lines past the checkpoint's epoch are
  dropped, a missing line is restored, a pending ``best.pt`` from the committed epoch is
  moved into place and one from an uncommitted epoch is deleted, stale temporaries go.
* **Sharded checkpoints** (``train.strategy: fsdp``): the model and optimiser are a folder
  ``sharded-<epoch>-<step>-<token>`` that every process writes (:func:`~mtmm_core.checkpoint.save_sharded`,
  itself atomic) before ``last.pt`` names it; once ``last.pt`` is renamed into place the folders it does not
  name are deleted, and :meth:`RunFolder.recover` deletes any left by a crash between the two.
* **Disk full** (any ``OSError`` while committing) is a :class:`RunError` naming the path;
  ``metrics.jsonl`` is cut back to its previous length and the previous ``last.pt`` stays.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import torch

from mtmm_core.checkpoint import load_checkpoint, save_checkpoint
from mtmm_core.errors import RunError, UsageError

LOCK_FILE = ".lock"
LOG_FILE = "metrics.jsonl"
OWN_FILES = ("config.yaml", "model.yaml", LOG_FILE, "last.pt", "best.pt", "best.pt.pending",
             "test_metrics.json", "tensorboard")


def _describe_owner(text: str) -> str:
    try:
        owner = json.loads(text)
        return f"pid {owner['pid']} on {owner['host']} (since {owner['started']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


class RunFolder:
    """The files of one run, under ``root``; every method is called by rank 0 only."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_fd: int | None = None

    # -- ownership ----------------------------------------------------------------------------------
    def lock(self) -> None:
        """Own the folder until :meth:`unlock`; :class:`RunError` when a live process owns it."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"{self.root} is a file, not a folder: give --out a new or empty folder")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe_owner(os.read(fd, 4096).decode(errors="replace"))
            os.close(fd)
            raise RunError(f"{self.root} is in use by {owner}: wait until that run ends, or stop it "
                           "(Ctrl-C or kill -TERM saves a checkpoint) and then --resume it") from None
        stale = os.read(fd, 4096).decode(errors="replace").strip()
        if stale:
            previous = json.loads(stale) if stale.startswith("{") else {}
            if previous.get("host") not in (None, socket.gethostname()):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise RunError(f"{self.root} is locked by {_describe_owner(stale)}, another machine, whose "
                               f"process this one cannot see; if no run is using the folder, delete {path}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        os.fsync(fd)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Give the folder up (removes ``.lock``)."""
        if self._lock_fd is None:
            return
        (self.root / LOCK_FILE).unlink(missing_ok=True)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    # -- a new run ----------------------------------------------------------------------------------
    def is_run(self) -> bool:
        """True when the folder holds an mtmm run (finished, interrupted, or never past its first epoch)."""
        return (self.root / "last.pt").is_file() or all(
            (self.root / name).is_file() for name in ("config.yaml", "model.yaml", LOG_FILE))

    def check_new(self, force: bool) -> None:
        """Refuse to start a run in a folder with other contents unless ``force``."""
        if not self.root.exists():
            return
        contents = sorted(p.name for p in self.root.iterdir() if p.name != LOCK_FILE)
        if not contents or force:
            return
        if (self.root / "last.pt").is_file():
            raise UsageError(f"{self.root} already holds a run: continue it with `mtmm train --resume {self.root}`, "
                           "choose another --out, or pass --force to start over in it")
        if self.is_run():
            raise UsageError(f"{self.root} holds a run that never finished an epoch: pass --force to start over "
                           "in it, or choose another --out")
        shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
        raise UsageError(f"--out {self.root} is not empty and not an mtmm run folder (it holds {shown}); "
                       "choose an empty or new folder, or pass --force to write mtmm's files into it")

    def start(self, config_text: str, model_text: str) -> None:
        """Write the run's ``config.yaml``, ``model.yaml`` and an empty log, replacing an old run's files."""
        self.prune_sharded(keep=None)
        for name in OWN_FILES:
            path = self.root / name
            if path.is_dir():
                for child in sorted(path.rglob("*"), reverse=True):
                    child.rmdir() if child.is_dir() else child.unlink()
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        self.remove_temporaries()
        for name, text in (("config.yaml", config_text), ("model.yaml", model_text), (LOG_FILE, "")):
            self.write_text(name, text)

    # -- commits ------------------------------------------------------------------------------------
    def save_step(self, state: dict[str, Any]) -> None:
        """Replace ``last.pt`` by ``state`` (a step boundary inside an epoch: no log line, no best)."""
        self._guarded(lambda: save_checkpoint(state, self.root / "last.pt"), self.root / "last.pt")
        self.prune_sharded(keep=state.get("sharded"))

    def commit_epoch(self, state: dict[str, Any], record: dict[str, Any], best_model: dict | None) -> None:
        """Make the epoch visible: its log line ``record``, ``best.pt`` (when ``best_model``) and ``last.pt``.

        ``state`` is the resume state; it gets ``log_record`` and ``best_epoch`` added.
        """
        epoch = record["epoch"]
        state = {**state, "log_record": json.dumps(record)}
        log = self.root / LOG_FILE
        log_size = log.stat().st_size if log.exists() else 0
        try:
            if best_model is not None:
                self._guarded(lambda: save_checkpoint({"model": best_model, "epoch": epoch},
                                                      self.root / "best.pt.pending"), self.root / "best.pt.pending")
            self._guarded(lambda: self._append_line(log, json.dumps(record)), log)
            self._guarded(lambda: save_checkpoint(state, self.root / "last.pt"), self.root / "last.pt")  # the commit
        except BaseException:  # the epoch did not happen: the log and best.pt stay as they were
            with open(log, "r+b") as handle:
                handle.truncate(log_size)
            (self.root / "best.pt.pending").unlink(missing_ok=True)
            raise
        if best_model is not None:
            os.replace(self.root / "best.pt.pending", self.root / "best.pt")
        self.prune_sharded(keep=state.get("sharded"))

    def recover(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """Finish or undo an interrupted commit; returns the state in ``last.pt`` (None before the first one)."""
        self.remove_temporaries()
        last = self.root / "last.pt"
        state = load_checkpoint(last, map_location) if last.is_file() else None
        epoch = state["epoch"] if state else 0
        pending = self.root / "best.pt.pending"
        if pending.is_file():
            committed = state is not None and load_checkpoint(pending).get("epoch") == state.get("best_epoch")
            if committed:
                os.replace(pending, self.root / "best.pt")
            else:
                pending.unlink()
        self._reconcile_log(epoch, state.get("log_record") if state else None)
        self.prune_sharded(keep=state.get("sharded") if state else None)
        return state

    def prune_sharded(self, keep: str | None) -> None:
        """Delete the sharded checkpoint folders (and their temporaries) other than ``keep``, the one
        ``last.pt`` names."""
        for path in [*self.root.glob("sharded-*"), *self.root.glob(".sharded-*.tmp")]:
            if path.is_dir() and path.name != keep:
                shutil.rmtree(path, ignore_errors=True)

    def remove_temporaries(self) -> None:
        """Delete ``.last.pt.*.tmp``-style files left by a process killed while writing."""
        for path in self.root.glob(".*.tmp"):
            if not path.is_dir():  # a sharded checkpoint's temporary folder goes in prune_sharded
                path.unlink(missing_ok=True)

    # -- helpers ------------------------------------------------------------------------------------
    def _reconcile_log(self, epoch: int, committed_line: str | None) -> None:
        """Keep exactly one log line per committed epoch: drop lines past ``epoch``, restore its own."""
        log = self.root / LOG_FILE
        lines = log.read_text().splitlines() if log.is_file() else []
        kept, seen = [], set()
        for line in lines:
            try:
                line_epoch = json.loads(line)["epoch"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
            if line_epoch <= epoch and line_epoch not in seen:
                kept.append(line)
                seen.add(line_epoch)
        if committed_line is not None and epoch not in seen:
            kept.append(committed_line)
        if kept != lines:
            self.write_text(LOG_FILE, "".join(line + "\n" for line in kept))

    def _guarded(self, write, path: Path) -> Any:
        """Run ``write``; an ``OSError`` becomes one :class:`RunError` naming ``path``."""
        try:
            return write()
        except OSError as error:
            reason = error.strerror or str(error)
            kept = self.root / "last.pt"
            previous = (f"the previous checkpoint {kept} is intact" if kept.is_file()
                        else "no checkpoint was written yet")
            raise RunError(f"cannot write {path}: {reason}; {previous}") from error

    @staticmethod
    def _append_line(path: Path, line: str) -> None:
        with open(path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_text(self, name: str | Path, text: str) -> None:
        """Write the file ``name`` in the folder atomically (a temporary file renamed over it)."""
        path = self.root / name
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")

        def write() -> None:
            with open(temporary, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)

        try:
            self._guarded(write, path)
        finally:
            temporary.unlink(missing_ok=True)

