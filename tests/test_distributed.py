"""Data-parallel training in 2 CPU processes (gloo) matches one process at the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

SMALL = ["--set", "model.dim=32", "--set", "model.encoders.image.channels=[16, 32]",
         "--set", "model.encoders.audio.depth=1", "--set", "model.modality_dropout=0.0",
         "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.progress=false"]


def train(out_dir, *extra: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    environment["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "mtmm_core.cli", "train", *SMALL, "--out", str(out_dir), *extra],
                          capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out_dir / "test_metrics.json").read_text())


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups are tested on Linux and macOS")
def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    single = train(tmp_path / "single")
    double = train(tmp_path / "double", "--nproc", "2")
    for key in ("image_digit.accuracy", "audio_digit.accuracy", "match.accuracy"):
        assert abs(single[key] - double[key]) < 0.02, (key, single[key], double[key])
    assert abs(single["digit_sum.mae"] - double["digit_sum.mae"]) < 0.15
    assert single["image_digit.accuracy"] > 0.3  # it learned: chance is 0.1
    log = [json.loads(line) for line in (tmp_path / "double" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2]  # one writer: rank 0
    assert sorted(p.name for p in (tmp_path / "double").iterdir()) == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "model.yaml", "test_metrics.json"]


def test_a_two_process_run_resumes_with_two_processes_only(tmp_path):
    first = train(tmp_path / "run", "--nproc", "2", "--set", "train.epochs=1")
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    resumed = subprocess.run([sys.executable, "-m", "mtmm_core.cli", "train", "--nproc", "2",
                              "--resume", str(tmp_path / "run")], capture_output=True, text=True, env=environment,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text()) == first
    alone = subprocess.run([sys.executable, "-m", "mtmm_core.cli", "train", "--resume", str(tmp_path / "run")],
                           capture_output=True, text=True, env=environment, timeout=600)
    assert alone.returncode == 2 and "trained by 2 processes; resume it with as many" in alone.stderr


# -- faults: a stalled rank, a killed launcher ------------------------------------------------------------
LONG = [*SMALL, "--set", "train.epochs=40", "--set", "train.patience=0", "--set", "train.collective_timeout=5"]


def start(out_dir, *extra: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    environment["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "mtmm_core.cli", "train", *LONG, "--out", str(out_dir), *extra],
                            stdout=subprocess.PIPE, stderr=stderr, text=True, env=environment)


def workers_of(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the training processes whose parent is ``launcher_pid`` (read from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as environ:
                variables = dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if b"=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher_pid and b"RANK" in variables:
            found[int(variables[b"RANK"])] = int(entry)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def training(run, launcher) -> bool:
    """Both workers exist and rank 0 holds the run folder's lock (taken just before the loop starts)."""
    if (run / ".lock").is_file() and len(workers_of(launcher.pid)) == 2:
        time.sleep(2.0)  # into the first steps
        return True
    return False


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG")


@linux_only
def test_a_stalled_rank_ends_every_rank_within_the_timeout_naming_it(tmp_path):
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        launcher = start(tmp_path / "run", "--nproc", "2", stderr=stderr)
    stopped = None
    try:
        wait_for(lambda: training(tmp_path / "run", launcher))
        stopped = workers_of(launcher.pid)[1]
        os.kill(stopped, signal.SIGSTOP)
        began = time.monotonic()
        wait_for(lambda: "stopped answering" in errors.read_text(), seconds=60)
        assert time.monotonic() - began < 30  # the 5 s timeout, then the check: not gloo's 30-minute default
        text = errors.read_text()
        assert "rank 1 stopped answering (stalled or dead)" in text and "train.collective_timeout (5 s)" in text
        os.kill(stopped, signal.SIGKILL)  # torchrun would do it after its 30 s grace period
        launcher.wait(timeout=120)
        assert launcher.returncode == 1, text[-3000:]
        assert "Traceback" not in text.split("stopped answering")[0].rsplit("\n", 1)[-1]
    finally:
        if stopped is not None and alive(stopped):
            os.kill(stopped, signal.SIGKILL)
        launcher.kill()


@linux_only
def test_killing_the_launcher_ends_the_workers_with_a_checkpoint(tmp_path):
    launcher = start(tmp_path / "run", "--nproc", "2")
    workers = {}
    try:
        wait_for(lambda: training(tmp_path / "run", launcher))
        workers = workers_of(launcher.pid)
        launcher.kill()  # SIGKILL: the launcher cannot pass anything on
        launcher.wait()
        wait_for(lambda: not any(alive(pid) for pid in workers.values()), seconds=60)
        wait_for(lambda: not (tmp_path / "run" / ".lock").exists(), seconds=10)
        from mtmm_core.checkpoint import load_checkpoint

        state = load_checkpoint(tmp_path / "run" / "last.pt")  # saved at the step boundary after SIGTERM
        assert state["epoch"] * 1000 + state["step_in_epoch"] > 0
    finally:
        for pid in workers.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_refusal_on_rank_0_ends_every_rank_at_once(tmp_path):
    from mtmm_core.run_folder import RunFolder

    owner = RunFolder(tmp_path / "run")
    owner.lock()  # this test process holds the folder: rank 0 is refused, rank 1 must not wait for it
    try:
        launcher = start(tmp_path / "run", "--nproc", "2")
        _, err = launcher.communicate(timeout=300)
    finally:
        owner.unlock()
    assert launcher.returncode == 1
    assert f"is in use by pid {os.getpid()}" in err and "rank 0 could not open the run folder" in err


def test_usage_errors_are_caught_once_before_the_processes_start(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    launcher = start(tmp_path / "mine", "--nproc", "2")
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 2
    assert err.count("mtmm: error:") == 1 and "not empty and not an mtmm run folder" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
