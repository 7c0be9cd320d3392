"""The run folder: one owner at a time, one commit per epoch, recovery from a kill at any point, disk full."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import mtmm_core.run_folder as run_folder
from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.errors import RunError, UsageError
from mtmm_core.run_folder import RunFolder
from mtmm_core.trainer import Trainer
from small_data import small_config

OVERRIDES = ("train.epochs=2", "data.train_rows=64", "train.batch_size=32", "train.patience=0")


def epochs_logged(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- ownership -------------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_owner_and_a_dead_owners_lock_is_taken_over(tmp_path):
    owner = RunFolder(tmp_path / "run")
    owner.lock()
    record = json.loads((tmp_path / "run" / ".lock").read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(RunError, match=rf"is in use by pid {os.getpid()} on {socket.gethostname()}"):
        RunFolder(tmp_path / "run").lock()
    owner.unlock()
    assert not (tmp_path / "run" / ".lock").exists()

    # A process killed while it held the lock leaves .lock behind, but its flock died with it.
    (tmp_path / "run" / ".lock").write_text(json.dumps({"pid": 999999, "host": socket.gethostname(),
                                                        "started": "earlier"}))
    taker = RunFolder(tmp_path / "run")
    taker.lock()
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    taker.unlock()


def test_a_lock_from_another_machine_is_not_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 4, "host": "elsewhere-node", "started": "earlier"}))
    with pytest.raises(RunError, match=r"locked by pid 4 on elsewhere-node .* delete .*\.lock"):
        RunFolder(tmp_path).lock()


def test_out_on_a_folder_that_is_not_a_run_is_refused_unless_forced(small_data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    with pytest.raises(UsageError, match=r"not empty and not an mtmm run folder \(it holds config.yaml\).*--force"):
        Trainer(small_config(*OVERRIDES), mine)
    assert (mine / "config.yaml").read_text() == "my own notes\n" and not (mine / ".lock").exists()

    Trainer(small_config(*OVERRIDES), tmp_path / "run").run()
    with pytest.raises(UsageError, match=r"already holds a run: continue it with `mtmm train --resume"):
        Trainer(small_config(*OVERRIDES), tmp_path / "run")
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    Trainer(small_config(*OVERRIDES, "train.epochs=1"), tmp_path / "run", force=True).run()
    assert epochs_logged(tmp_path / "run") == [1] and (tmp_path / "run" / "notes.txt").read_text() == "keep me"


def cli(*args: str, **popen) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    environment["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "mtmm_core.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment, **popen)


SMALL = ["--set", "model.dim=16", "--set", "model.encoders.image.channels=[8, 16]", "--set",
         "model.encoders.audio.depth=1", "--set", "train.progress=false", "--set", "train.patience=0"]


def wait_for(condition, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_live_run_refuses_a_second_writer_and_a_resume_then_sigterm_saves_and_resumes(tmp_path):
    run = tmp_path / "run"
    first = cli("train", *SMALL, "--set", "train.epochs=30", "--out", str(run))
    wait_for(lambda: owner_pid(run) == first.pid)
    for argv in (["train", *SMALL, "--out", str(run)], ["train", "--resume", str(run)]):
        second = cli(*argv)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 1, err
        assert f"is in use by pid {first.pid}" in err and "Traceback" not in err
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err
    assert "SIGTERM: stopped at " in err and f"--resume {run}" in err
    assert not (run / ".lock").exists()
    state = load_checkpoint(run / "last.pt")
    assert epochs_logged(run) == list(range(1, state["epoch"] + 1))
    resumed = cli("train", "--resume", str(run), "--set", "train.progress=false")
    wait_for(lambda: owner_pid(run) == resumed.pid)
    time.sleep(0.5)
    resumed.send_signal(signal.SIGINT)  # a resumed run stops the same way
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 130, err
    assert "resuming with train.progress=false" in err and "SIGINT: stopped at " in err
    later = load_checkpoint(run / "last.pt")
    assert (later["epoch"], later["step_in_epoch"]) > (state["epoch"], state["step_in_epoch"])


def owner_pid(run) -> int | None:
    try:
        return json.loads((run / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


# -- one commit per epoch --------------------------------------------------------------------------------
def test_a_kill_between_the_log_line_and_last_pt_is_undone_on_resume(small_data, tmp_path, monkeypatch):
    """SIGKILL after the epoch-2 log line and best.pt.pending are written, before last.pt: simulated by a
    BaseException that skips the commit's own clean-up, as a dead process would."""
    run = tmp_path / "run"
    straight = Trainer(small_config(*OVERRIDES), tmp_path / "straight").run()
    original = run_folder.save_checkpoint

    class Killed(BaseException):
        pass

    def die_on_epoch_2_last(state, path):
        if os.path.basename(str(path)) == "last.pt" and state.get("epoch") == 2:
            open(os.path.join(os.path.dirname(str(path)), ".last.pt.abc.tmp"), "wb").write(b"half")
            raise Killed
        return original(state, path)

    monkeypatch.setattr(run_folder, "save_checkpoint", die_on_epoch_2_last)
    monkeypatch.setattr(run_folder.RunFolder, "commit_epoch", _commit_without_cleanup)
    trainer = Trainer(small_config(*OVERRIDES), run)
    with pytest.raises(Killed):
        trainer.run()
    assert epochs_logged(run) == [1, 2] and (run / ".last.pt.abc.tmp").exists()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    monkeypatch.undo()
    resumed = Trainer(small_config(*OVERRIDES), run, resume=True).run()
    assert epochs_logged(run) == [1, 2] and not list(run.glob(".*.tmp"))
    assert resumed == straight


def _commit_without_cleanup(self, state, record, best_model):
    """commit_epoch as a process killed mid-way leaves it: no except-branch runs."""
    epoch = record["epoch"]
    state = {**state, "log_record": json.dumps(record)}
    if best_model is not None:
        run_folder.save_checkpoint({"model": best_model, "epoch": epoch}, self.root / "best.pt.pending")
    self._append_line(self.root / "metrics.jsonl", json.dumps(record))
    run_folder.save_checkpoint(state, self.root / "last.pt")
    if best_model is not None:
        os.replace(self.root / "best.pt.pending", self.root / "best.pt")


def test_recovery_finishes_a_commit_whose_best_pt_rename_and_log_line_were_lost(tmp_path):
    """Killed after last.pt (the commit) but before best.pt.pending was renamed, with the log line lost."""
    folder = RunFolder(tmp_path)
    folder.start("{}", "{}")
    record = {"epoch": 1, "validation": {"loss": 1.0}}
    folder.commit_epoch({"epoch": 1, "best_epoch": 1}, record, {"w": torch.ones(2)})
    torch.save({"model": {"w": torch.full((2,), 2.0)}, "epoch": 2}, tmp_path / "best.pt.pending")
    state = {"epoch": 2, "best_epoch": 2, "log_record": json.dumps({"epoch": 2, "validation": {"loss": 0.5}})}
    torch.save(state, tmp_path / "last.pt")
    assert folder.recover()["epoch"] == 2
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2 and not (tmp_path / "best.pt.pending").exists()
    assert epochs_logged(tmp_path) == [1, 2]

    # A pending best.pt from an epoch that was never committed is dropped, with its log line.
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "best.pt.pending")
    with open(tmp_path / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"epoch": 3}) + "\n" + '{"epoch": 4, "trunc')
    folder.recover()
    assert not (tmp_path / "best.pt.pending").exists() and load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert epochs_logged(tmp_path) == [1, 2]


def test_disk_full_is_one_error_naming_the_file_and_leaves_the_previous_epoch_whole(small_data, tmp_path,
                                                                                   monkeypatch):
    run = tmp_path / "run"
    original = torch.save

    def full_disk(state, file, *args, **kwargs):
        if isinstance(state, dict) and state.get("epoch") == 2 and "optimizer" in state:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(state, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RunError, match=rf"cannot write {run / 'last.pt'}: No space left on device; "
                                       rf"the previous checkpoint {run / 'last.pt'} is intact"):
        Trainer(small_config(*OVERRIDES), run).run()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and epochs_logged(run) == [1]
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    assert not list(run.glob(".*.tmp")) and not (run / "best.pt.pending").exists()
    assert not (run / ".lock").exists()
