"""benchmarks/gpu_suite.py: the dry run on CPU writes one JSON holding every section; failures are soft.

The suite itself is for a CUDA machine; here its ``--dry-run`` runs a tiny CPU version of
every section (the PyTorch fallbacks, no Triton) in a subprocess, and a few in-process
runs with stub sections check the exit status, the error recording and ``--resume``.
The sections and helpers live in ``benchmarks/gpubench/`` (importable once the suite is loaded).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
PARTS = ROOT / "benchmarks" / "gpubench"  # the package gpu_suite.py runs its sections from
SECTIONS = ["environment", "ceilings", "correctness", "attention", "multitask_loss", "train_step", "pytest"]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("MTMM_KERNEL_BACKEND", None)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu_suite") / "suite.json"
    done = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(out)], cwd=str(ROOT), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(out.read_text())


@pytest.fixture
def suite(monkeypatch):
    """The suite imported in-process (its module-level setup only adds paths to sys.path)."""
    spec = importlib.util.spec_from_file_location("mtmm_gpu_suite_under_test", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # a dry run sets one thread


def test_dry_run_json_holds_every_section(dry_run) -> None:
    done, report = dry_run
    assert report["schema"] == 1 and report["dry_run"] is True and report["device_kind"] == "cpu"
    assert list(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("traceback"))
        assert section["seconds"] >= 0 and isinstance(section["result"], dict)
    assert report["summary"]["correctness_failed"] is False
    assert report["summary"]["section_errors"] == {}
    assert report["finished"] and report["wall_s"] > 0
    assert "wrote" in done.stdout and "correctness: all checks passed" in done.stdout

    env = report["sections"]["environment"]["result"]
    for key in ("device", "capability", "torch", "triton", "torch_cuda", "python", "import", "git"):
        assert key in env
    ceilings = report["sections"]["ceilings"]["result"]
    assert ceilings["copy_gbs"] > 0 and ceilings["matmul_tflops"] > 0


def _check_time(stats: dict) -> None:
    for key in ("median_ms", "min_ms", "max_ms", "p10_ms", "p90_ms", "iqr_ms", "reps", "inner"):
        assert key in stats
    assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]
    assert stats["reps"] >= 1 and stats["inner"] >= 1


def test_dry_run_correctness_section(dry_run) -> None:
    result = dry_run[1]["sections"]["correctness"]["result"]
    assert result["backend"] == "torch" and "no CUDA" in result["note"]
    assert result["attention"] and result["multitask_loss"]
    assert result["checked"] == len(result["attention"]) + len(result["multitask_loss"]) and result["failed"] == 0
    for case in result["attention"]:
        assert case["passed"] and case["worst_tol_ratio"] <= 1
        for name in ("out", "dq", "dk", "dv"):
            assert {"tol_ratio", "rel_l2", "max_abs"} <= set(case[name])
        assert case["masked_samples"] >= 1 and case["masked_samples_zero"] is True  # a fully masked sample
        assert "rerun_identical" in case
    for case in result["multitask_loss"]:
        assert case["passed"] and {"total", "per_task", "d_log_vars"} <= set(case)


def test_dry_run_attention_and_loss_tables(dry_run) -> None:
    sections = dry_run[1]["sections"]
    attention = sections["attention"]["result"]
    assert attention["fused_is"] == "PyTorch fallback" and attention["sdpa_backend"]["T"]
    assert {(r["impl"], r["mode"]) for r in attention["rows"]} == {
        (impl, mode) for impl in ("fused", "eager", "sdpa") for mode in ("fwd", "fwd+bwd")}
    for row in attention["rows"]:
        _check_time(row["time"])
        assert row["ms"] == row["time"]["median_ms"] and row["tflops"] > 0 and row["fused_speedup"] > 0
    assert attention["masking"][0]["half_over_all_valid"] > 0
    loss = sections["multitask_loss"]["result"]
    assert {(r["impl"], r["mode"]) for r in loss["rows"]} == {
        (impl, mode) for impl in ("fused", "eager") for mode in ("fwd", "fwd+bwd")}
    for row in loss["rows"]:
        _check_time(row["time"])
        assert row["gbs"] > 0 and row["speedup_vs_eager"] > 0


def test_dry_run_train_step_and_pytest(dry_run) -> None:
    sections = dry_run[1]["sections"]
    train = sections["train_step"]["result"]
    assert train["data"] == "avdigits" and train["parameters"] > 0
    assert [(r["backend_env"], r["compile"]) for r in train["runs"]] == [("torch", False), ("auto", False)]
    for run in train["runs"]:
        _check_time(run["time"])
        assert run["loss_finite"] and run["back_to_back_ms"] > 0
    assert "skipped" in train["compile"]
    assert [s["variant"] for s in train["speedups"]] == ["auto"]
    pytest_result = sections["pytest"]["result"]
    assert pytest_result["passed"] and pytest_result["junit"]["passed"] == 2


def test_without_cuda_it_says_so_and_exits_2(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(SUITE), "--out", str(tmp_path / "x.json")], cwd=str(ROOT),
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_bad_arguments_are_refused(suite) -> None:
    with pytest.raises(SystemExit) as raised:
        suite.parse_args(["--sections", "environment,nonsense"])
    assert raised.value.code == 2
    with pytest.raises(SystemExit):
        suite.parse_args(["--shapes", "T,X"])


def test_a_failed_correctness_check_gives_exit_1_and_a_crash_is_recorded(suite, monkeypatch, tmp_path) -> None:
    def failing(ctx):
        return {"backend": "torch", "attention": [], "multitask_loss": [], "not_run": [], "checked": 1, "failed": 1,
                "all_passed": False}

    def crashing(ctx):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(suite.RUNNERS, "correctness", failing)
    monkeypatch.setitem(suite.RUNNERS, "ceilings", crashing)
    out = tmp_path / "r.json"
    code = suite.main(["--dry-run", "--sections", "ceilings,correctness", "--out", str(out)])
    assert code == 1
    report = json.loads(out.read_text())
    assert report["sections"]["correctness"]["status"] == "failed"
    assert report["sections"]["ceilings"]["status"] == "error"
    assert report["sections"]["ceilings"]["error"] == "RuntimeError: boom"
    assert "Traceback" in report["sections"]["ceilings"]["traceback"]
    assert report["sections"]["attention"] == {"status": "skipped", "reason": "not in --sections"}
    assert report["summary"]["correctness_failed"] is True
    assert report["summary"]["section_errors"] == {"ceilings": "RuntimeError: boom"}

    # A crash outside the correctness sections is recorded but does not change the exit status.
    monkeypatch.setitem(suite.RUNNERS, "correctness", lambda ctx: {"all_passed": True, "checked": 0, "failed": 0})
    assert suite.main(["--dry-run", "--sections", "ceilings,correctness", "--out", str(out)]) == 0


def test_resume_keeps_finished_sections_and_runs_the_rest(suite, monkeypatch, tmp_path) -> None:
    calls = []

    def stub(name):
        def run(ctx):
            calls.append(name)
            return {"all_passed": True, "value": name}
        return run

    for name in SECTIONS[1:]:
        monkeypatch.setitem(suite.RUNNERS, name, stub(name))
    out = tmp_path / "r.json"
    assert suite.main(["--dry-run", "--sections", "ceilings", "--out", str(out)]) == 0
    assert calls == ["ceilings"]
    assert suite.main(["--dry-run", "--resume", str(out), "--sections", "ceilings,attention"]) == 0
    assert calls == ["ceilings", "attention"]  # ceilings kept, attention run
    report = json.loads(out.read_text())
    assert report["sections"]["ceilings"]["result"]["value"] == "ceilings"
    assert report["sections"]["attention"]["result"]["value"] == "attention"
    assert len(report["resumed"]) == 1 and report["sections"]["environment"]["earlier"]


def test_time_budget_skips_what_is_left(suite, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(suite.RUNNERS, "ceilings", lambda ctx: {})
    out = tmp_path / "r.json"
    assert suite.main(["--dry-run", "--sections", "ceilings", "--time-budget", "0", "--out", str(out)]) == 0
    section = json.loads(out.read_text())["sections"]["ceilings"]
    assert section["status"] == "skipped" and "time budget" in section["reason"]


def test_timing_summary_and_junit_parsing(suite, tmp_path) -> None:
    from gpubench.common import summarize, time_calls  # on sys.path once the suite is loaded
    from gpubench.pytest_section import junit_summary

    stats = summarize([3.0, 1.0, 2.0, 10.0])
    assert stats["median_ms"] == 2.5 and stats["min_ms"] == 1.0 and stats["max_ms"] == 10.0 and stats["reps"] == 4
    timed = time_calls(lambda: None, "cpu", reps=3, warmup=1, sample_ms=0.1)
    assert timed["reps"] == 3 and timed["inner"] >= 1
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                     '<testcase classname="t" name="a"/><testcase classname="t" name="b">'
                     '<failure message="boom"/></testcase><testcase classname="t" name="c"><skipped/></testcase>'
                     '</testsuite></testsuites>')
    summary = junit_summary(junit)
    assert summary["passed"] == 1 and summary["failures"] == 1 and summary["skipped"] == 1
    assert summary["failed_tests"] == [{"test": "t::b", "kind": "failure", "message": "boom"}]
    assert suite.clean_json({"a": float("nan"), "b": (1, torch.tensor(2.5))}) == {"a": None, "b": [1, 2.5]}
    assert suite.safe_name("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"


def test_shim_entry_points_come_from_pyproject(suite) -> None:
    from gpubench.importable import _entry_points_from_pyproject

    text = _entry_points_from_pyproject()
    assert text.startswith("[mtmm]\n") and "encoders = mtmm_plugins.encoders" in text


def test_parses_as_python_3_10() -> None:
    """The GPU machines may run an older Python than this one: no syntax newer than 3.10."""
    parts = sorted(PARTS.glob("*.py"))
    assert len(parts) >= 8, parts
    for path in (SUITE, *parts):
        ast.parse(path.read_text(), feature_version=(3, 10), filename=str(path))
