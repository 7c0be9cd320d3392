"""Section 7: the kernel test files run by pytest in a subprocess (on the GPU), within what is left of the budget."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import torch

from .common import ENV_BACKEND, Context
from .importable import IMPORT_INFO, ROOT


# ============================================================================= section 7: pytest


def junit_summary(path: Path) -> dict[str, Any]:
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in suites:
        for key in totals:
            totals[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            for tag in ("failure", "error"):
                node = case.find(tag)
                if node is not None:
                    failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": tag,
                                   "message": (node.get("message") or "")[:400]})
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    totals["failed_tests"] = failed[:50]
    return totals


def section_pytest(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    files = [f for f in a.pytest_files.split(",") if f]
    timeout = max(30.0, ctx.budget.left())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(IMPORT_INFO["pythonpath"] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                      else []))
    env.pop(ENV_BACKEND, None)
    if ctx.cuda:
        torch.cuda.empty_cache()  # the tests run in a second process on the same GPU
    with tempfile.TemporaryDirectory(prefix="mtmm_gpu_suite_pytest_") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                   *files, *a.pytest_args]
        began = time.perf_counter()
        out: dict[str, Any] = {"command": command[1:], "timeout_s": timeout}
        try:
            done = subprocess.run(command, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout)
            out["returncode"] = done.returncode
            out["output_tail"] = (done.stdout + done.stderr)[-4000:]
        except subprocess.TimeoutExpired as error:
            out["returncode"] = None
            out["timed_out"] = True
            tail = error.stdout or b""
            out["output_tail"] = (tail.decode(errors="replace") if isinstance(tail, bytes) else tail)[-4000:]
        out["seconds"] = time.perf_counter() - began
        if junit.is_file():
            out["junit"] = junit_summary(junit)
    out["passed"] = out.get("returncode") == 0
    return out
