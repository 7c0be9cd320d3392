"""benchmarks/aot_check.py: the recorder sees the launches the real code makes, and the gate's rules.

The gate imports the kernel modules compiled (not interpreted), which this test session may
already have imported under ``TRITON_INTERPRET=1``, so the runs go to a subprocess.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "aot_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("aot_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


aot_check = _load()
WHY = aot_check.unavailable()
needs_compiler = pytest.mark.skipif(WHY is not None, reason=f"aot_check cannot run here: {WHY}")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=900, cwd=ROOT)


def _row(**overrides) -> dict:
    row = {"kernel": "_attn_fwd", "config": "64x64 w4 s3", "dtype": "bf16", "D": 64, "variant": "mask",
           "arch": "sm_90a", "regs": 128, "spill": 0, "shared": 64 * 1024, "hgmma": 8, "hmma": 0, "dot": True,
           "error": None, "seconds": 1.0}
    row.update(overrides)
    return row


def test_rules() -> None:
    assert aot_check.problems(_row()) == []
    assert aot_check.problems(_row(spill=24)) == ["spills 24 B"]
    assert aot_check.problems(_row(shared=228 * 1024)) == ["shared 228 KiB > 227 KiB"]
    assert aot_check.problems(_row(arch="sm_80", shared=164 * 1024, hgmma=0, hmma=4)) == ["shared 164 KiB > 163 KiB"]
    assert aot_check.problems(_row(hgmma=0)) == ["dot without tensor-core MMA"]
    assert aot_check.problems(_row(hgmma=0, dtype="fp32-tf32")) == ["dot without tensor-core MMA"]
    assert aot_check.problems(_row(hgmma=0, dtype="fp32-ieee")) == []  # IEEE float32: CUDA cores by design
    assert aot_check.problems(_row(hgmma=0, dot=False, dtype="fp16")) == []  # no dot at all (the loss kernels)
    assert aot_check.problems(_row(error="PTXASError: ...")) == ["compile error"]


def test_skips_cleanly_without_the_compiler(monkeypatch, capsys) -> None:
    monkeypatch.setattr(aot_check, "unavailable", lambda: "not Linux")
    assert aot_check.main(["--quick"]) == 0
    assert "skipped" in capsys.readouterr().out


@needs_compiler
def test_recorded_signatures_are_those_of_the_real_launches() -> None:
    """Every kernel the code launches is recorded, with the launch's dtypes and constexprs."""
    result = _run("--quick", "--list", "--arch", "sm_80")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    kernels = {line.split()[0] for line in lines}
    assert kernels == {"_attn_fwd", "_attn_bwd_delta", "_attn_bwd", "_forward_kernel", "_backward_kernel"}
    bf16_fwd = [line for line in lines if line.startswith("_attn_fwd ") and " bf16 " in line]
    assert bf16_fwd and all("'Q': '*bf16'" in line and "'MASK': '*u8'" in line for line in bf16_fwd)
    assert all("'HAS_MASK': True" in line and "'BLOCK_D': 128" in line for line in bf16_fwd)
    tf32 = [line for line in lines if line.startswith("_attn_bwd ") and " fp32-tf32 " in line]
    assert tf32 and all("'PRECISION': 'tf32'" in line for line in tf32)
    # The loss: one launch per group of kinds, batch sizes not specialised on.
    loss = [line for line in lines if line.startswith("_forward_kernel ") and " fp16 " in line]
    assert len(loss) == 2 and all("'batch': ('i32'" in line for line in loss)


@needs_compiler
def test_builds_and_reads_a_kernel() -> None:
    result = _run("--quick", "--arch", "sm_80", "--kernel", "_attn_bwd_delta")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("_attn_bwd_delta ")]
    assert {row[2] for row in rows} == {"fp16", "bf16", "fp32-ieee"}
    assert all(row[-1] == "ok" for row in rows)
