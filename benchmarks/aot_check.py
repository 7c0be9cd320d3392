#!/usr/bin/env python
"""Ahead-of-time compile gate for the Triton kernels of ``mtmm_kernels`` (no GPU needed).

What it builds: every kernel the code launches, with the signature and constexprs the real
launch sites produce. The launch code itself runs (``attention_triton._forward`` and
``_backward``, the multitask loss's autograd function, forward and backward) on CPU tensors
while ``JITFunction.run`` and ``Autotuner.run`` are replaced by a recorder of their arguments.
Each recorded launch is bound by Triton's own binder for the target (pointer dtypes, which
integers are specialised, every constexpr: exactly what a launch on that GPU compiles), an
autotuned kernel is expanded over the configs its pruning keeps on that architecture, and
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90 or 80, 32))`` builds it.

What it checks, per compiled kernel: ``cuobjdump -res-usage`` (registers; STACK + LOCAL bytes,
which in these kernels hold only register spills), the shared memory Triton reserves for the
launch (``metadata.shared``), and ``cuobjdump -sass`` (HGMMA: warpgroup MMA on sm_90a; HMMA:
mma.sync). It fails (exit 1) on a compile error, any spill, shared memory over the
architecture's per-block limit (227 KiB sm_90a, 163 KiB sm_80), or a tensor-core dot (float16,
bfloat16, float32 as TF32) compiled without tensor-core MMA.

    python benchmarks/aot_check.py --quick      # CI: every kernel and dtype, the worst cases
    python benchmarks/aot_check.py              # the full sweep
    python benchmarks/aot_check.py --json out.json --jobs 4

Compiled kernels are cached by Triton (``TRITON_CACHE_DIR``, default ``~/.triton/cache``);
the resource numbers read from each cubin are cached beside them (``<cache>/mtmm_aot/``), so
a second run rebuilds nothing that did not change. Exits 0 with a message, checking nothing,
where triton or its ptxas/cuobjdump cannot run (not Linux, triton absent).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import inspect
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

#: name -> (compute capability, per-block shared memory limit in bytes, warpgroup MMA expected)
ARCHS = {
    "sm_90a": (90, 227 * 1024),
    "sm_80": (80, 163 * 1024),
}
DTYPES = ("fp16", "bf16", "fp32")
HEAD_DIMS = (16, 32, 64, 128)  # every padded head dim BLOCK_D the attention kernel builds (D <= 128)
MASKINGS = ("none", "lengths", "mask")


# ----------------------------------------------------------------------------- availability


def unavailable() -> str | None:
    """Why the gate cannot run here (None when it can)."""
    if not sys.platform.startswith("linux"):
        return f"Triton's NVIDIA compiler runs on Linux only (this is {sys.platform})"
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as e:  # noqa: BLE001  (absent, or a broken install)
        return f"triton does not import ({type(e).__name__}: {e})"
    for tool in ("ptxas", "cuobjdump"):
        path = tool_path(tool)
        try:
            subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
        except Exception as e:  # noqa: BLE001
            return f"{tool} cannot run ({path}: {type(e).__name__})"
    return None


def tool_path(name: str) -> str:
    """A CUDA tool shipped with triton (``TRITON_<NAME>_PATH`` overrides it, as in Triton)."""
    import triton

    override = os.environ.get(f"TRITON_{name.upper()}_PATH")
    if override:
        return override
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def triton_cache_dir() -> Path:
    try:
        from triton import knobs

        if knobs.cache.dir:
            return Path(knobs.cache.dir)
    except Exception:  # noqa: BLE001  (older triton: no knobs)
        pass
    return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")


# ----------------------------------------------------------------------------- recording launches


@dataclasses.dataclass
class Launch:
    """One recorded ``kernel[grid](*args, **kwargs)``: ``kernel`` is a JITFunction or an Autotuner."""

    kernel: Any
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def recording():
    """Replace launching by recording: yields the list the launches are appended to."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []
    saved = {cls: cls.__dict__["run"] for cls in (JITFunction, Autotuner)}

    def record(self, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        launches.append(Launch(self, args, kwargs))

    for cls in saved:
        cls.run = record
    try:
        yield launches
    finally:
        for cls, run in saved.items():
            cls.run = run


def jit_function(kernel):
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def kernel_configs(launch: Launch, capability: int) -> list:
    """The configs an autotuned launch may run on ``capability`` (its pruning, for that GPU); [None] if not autotuned.

    Modules whose pruning depends on the GPU read it from their ``AOT_CAPABILITY`` attribute
    (major * 10 + minor) when the tensors are not on a GPU; it is set here for the duration of the call.
    """
    from triton.runtime.autotuner import Autotuner

    if not isinstance(launch.kernel, Autotuner):
        return [None]
    tuner = launch.kernel
    configs = list(tuner.configs)
    prune = getattr(tuner, "early_config_prune", None)
    if prune is None:
        return configs
    module = sys.modules[jit_function(tuner).fn.__module__]
    before = getattr(module, "AOT_CAPABILITY", None)
    module.AOT_CAPABILITY = capability
    try:
        named = dict(zip(tuner.arg_names, launch.args))
        return list(prune(configs, named, **launch.kwargs))
    finally:
        module.AOT_CAPABILITY = before


def config_label(config) -> str:
    if config is None:
        return "-"
    blocks = "x".join(str(v) for k, v in config.kwargs.items() if k.startswith("BLOCK"))
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


# ----------------------------------------------------------------------------- scenarios


@dataclasses.dataclass
class Scenario:
    """A call of the real launch code; its launches are compiled."""

    family: str  # "attention" | "multitask_loss"
    dtype: str  # fp16, bf16, fp32 (fp32-ieee / fp32-tf32 for attention: torch's allow_tf32)
    head_dim: int | None
    variant: str  # attention masking, or the loss's task list
    run: Callable[[], None]


def _torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


@contextlib.contextmanager
def _dispatch_to_triton_on_cpu():
    """Let the public functions take CPU tensors to their Triton backend (as under the interpreter).

    The kernel modules were imported without ``TRITON_INTERPRET`` (compiled jit functions, the
    GPU's autotune configs); the backend choice reads the variable on every call.
    """
    import_kernels()  # first, without the variable
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before


def attention_scenario(dtype: str, tf32: bool, head_dim: int, masking: str) -> Scenario:
    """Forward + backward of ``cross_modal_attention(..., backend="triton")``: ragged lengths large
    enough that the autotuner's pruning keeps every config (short lengths prune the large tiles)."""

    def run():
        import torch

        from mtmm_kernels import cross_modal_attention

        B, H, Lq, Lk, D = 2, 2, 1001, 1537, head_dim
        q, k, v = (torch.randn(B, H, L, D).to(_torch_dtype(dtype)).requires_grad_() for L in (Lq, Lk, Lk))
        kwargs = {}
        if masking == "lengths":
            kwargs["key_lengths"] = torch.tensor([Lk, Lk // 2])
        elif masking == "mask":
            kwargs["key_padding_mask"] = torch.rand(B, Lk) < 0.5
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            with _dispatch_to_triton_on_cpu():
                out = cross_modal_attention(q, k, v, backend="triton", **kwargs)
                out.backward(torch.randn_like(out))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved

    name = dtype if dtype != "fp32" else ("fp32-tf32" if tf32 else "fp32-ieee")
    return Scenario("attention", name, head_dim, masking, run)


#: Task lists of the multitask-loss scenarios: (kind, width: 0 = [B], else C or K, with a task mask).
LOSS_TASKS = {
    "mixed": [("cross_entropy", 10, False), ("cross_entropy", 32000, True), ("bce", 5, True), ("mse", 0, False),
              ("l1", 3, True), ("huber", 0, False)],
    "classification": [("cross_entropy", 1000, True), ("bce", 40, False)],
}


def loss_scenario(dtype: str, tasks: str, log_vars: bool) -> Scenario:
    """Forward + backward of ``multitask_loss(..., backend="triton")`` (a ragged batch: 1000 rows)."""

    def run():
        import torch

        from mtmm_kernels import multitask_loss

        B, dt = 1000, _torch_dtype(dtype)
        preds, targets, masks, kinds = [], [], [], []
        for kind, width, masked in LOSS_TASKS[tasks]:
            shape = (B,) if width == 0 else (B, width)
            if kind == "cross_entropy":
                preds.append(torch.randn(B, width, dtype=dt, requires_grad=True))
                targets.append(torch.randint(0, width, (B,)))
            else:
                preds.append(torch.randn(shape, dtype=dt, requires_grad=True))
                targets.append(torch.rand(shape, dtype=dt))
            masks.append(torch.rand(B) < 0.7 if masked else None)
            kinds.append(kind)
        s = torch.zeros(len(kinds), requires_grad=True) if log_vars else None
        with _dispatch_to_triton_on_cpu():
            total, per_task = multitask_loss(preds, targets, kinds, log_vars=s, task_masks=masks, backend="triton")
            (total + per_task.sum()).backward()

    return Scenario("multitask_loss", dtype, None, f"{tasks}{' log_vars' if log_vars else ''}", run)


def scenarios(quick: bool, dtypes: tuple[str, ...] = DTYPES) -> list[Scenario]:
    """The full sweep, or the CI set: every kernel and every dtype, at the heaviest head dim and masking."""
    out = []
    if quick:
        for dtype in dtypes:
            for tf32 in ((False, True) if dtype == "fp32" else (False,)):
                out.append(attention_scenario(dtype, tf32, 128, "mask"))
            out.append(loss_scenario(dtype, "mixed", log_vars=True))
        return out
    for dtype in dtypes:
        for tf32 in ((False, True) if dtype == "fp32" else (False,)):
            for head_dim in HEAD_DIMS:
                for masking in MASKINGS:
                    out.append(attention_scenario(dtype, tf32, head_dim, masking))
        for tasks in LOSS_TASKS:
            for log_vars in (False, True):
                out.append(loss_scenario(dtype, tasks, log_vars))
    return out


# ----------------------------------------------------------------------------- compiling


@dataclasses.dataclass
class Job:
    scenario: Scenario
    launch: Launch
    config: Any
    arch: str
    kernel_name: str
    key: str = ""


def _bind(jit, target, args: tuple, kwargs: dict):
    """Signature, constexprs, attributes and options of a launch, by Triton's own binder for ``target``."""
    from triton.compiler.compiler import make_backend
    from triton.runtime import jit as jit_module

    backend = make_backend(target)
    binder = jit_module.create_function_from_signature(jit.signature, jit.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options


def prepare(job: Job):
    """``(ASTSource, target, options dict)`` of a job, and a stable text key of what is compiled."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    capability, _ = ARCHS[job.arch]
    target = GPUTarget("cuda", capability, 32)
    kwargs = dict(job.launch.kwargs)
    if job.config is not None:
        kwargs.update(job.config.all_kwargs())
    jit = jit_function(job.launch.kernel)
    signature, constexprs, attrs, options = _bind(jit, target, job.launch.args, kwargs)
    source = ASTSource(jit, signature, constexprs, attrs)
    key = repr((jit.fn.__module__, jit.fn.__qualname__, signature, constexprs, attrs,
                sorted(options.__dict__.items()), job.arch))
    return source, target, options.__dict__, key


def _analysis_cache() -> Path:
    path = triton_cache_dir() / "mtmm_aot"
    path.mkdir(parents=True, exist_ok=True)
    return path


def analyse_cubin(cubin: bytes) -> dict:
    """Registers, spill bytes (STACK + LOCAL) and MMA instruction counts of a cubin (cached by its hash)."""
    digest = hashlib.sha256(cubin).hexdigest()
    cached = _analysis_cache() / f"{digest}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([tool_path("cuobjdump"), "-res-usage", str(path)], check=True,
                               capture_output=True, text=True).stdout
        sass = subprocess.run([tool_path("cuobjdump"), "-sass", str(path)], check=True,
                              capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", usage.split("Function", 1)[-1]))
    result = {
        "regs": int(fields.get("REG", 0)),
        "spill": int(fields.get("STACK", 0)) + int(fields.get("LOCAL", 0)),
        "hgmma": len(re.findall(r"\bHGMMA\.", sass)),
        "hmma": len(re.findall(r"\bHMMA\.", sass)),
        "local_insts": len(re.findall(r"\b(?:STL|LDL)\b", sass)),
    }
    tmp_path = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp_path.write_text(json.dumps(result))
    tmp_path.replace(cached)
    return result


#: Filled in the parent before the worker processes fork (they index into it).
JOBS: list[Job] = []


def compile_job(index: int) -> dict:
    """Compile and analyse ``JOBS[index]``; a row of the table."""
    import triton

    job = JOBS[index]
    row = {"kernel": job.kernel_name, "config": config_label(job.config), "dtype": job.scenario.dtype,
           "D": job.scenario.head_dim, "variant": job.scenario.variant, "arch": job.arch}
    start = time.perf_counter()
    try:
        source, target, options, _ = prepare(job)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = triton.compile(source, target=target, options=options)
        row.update(analyse_cubin(compiled.asm["cubin"]))
        row["shared"] = int(compiled.metadata.shared)
        row["dot"] = "tt.dot" in compiled.asm["ttir"]
        row["error"] = None
    except Exception as e:  # noqa: BLE001  (a compile error is a finding, reported in the table)
        row.update(regs=None, spill=None, hgmma=None, hmma=None, shared=None, dot=None,
                   error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:200])
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["problems"] = problems(row)
    return row


def problems(row: dict) -> list[str]:
    """What fails the gate in one row."""
    if row["error"]:
        return ["compile error"]
    found = []
    if row["spill"]:
        found.append(f"spills {row['spill']} B")
    _, limit = ARCHS[row["arch"]]
    if row["shared"] > limit:
        found.append(f"shared {row['shared'] // 1024} KiB > {limit // 1024} KiB")
    tensor_core = row["dtype"] in ("fp16", "bf16", "fp32-tf32")
    if row["dot"] and tensor_core and row["hgmma"] + row["hmma"] == 0:
        found.append("dot without tensor-core MMA")
    return found


def build_jobs(selected: list[Scenario], archs: list[str]) -> list[Job]:
    """Record every scenario's launches and expand them over configs and architectures (deduplicated)."""
    jobs, seen = [], set()
    for scenario in selected:
        with recording() as launches:
            scenario.run()
        if not launches:
            raise RuntimeError(f"{scenario.family} {scenario.dtype} {scenario.variant}: the launch code launched "
                               "no Triton kernel (a fallback ran instead?)")
        for launch in launches:
            name = jit_function(launch.kernel).fn.__name__
            for arch in archs:
                for config in kernel_configs(launch, ARCHS[arch][0]):
                    job = Job(scenario, launch, config, arch, name)
                    job.key = prepare(job)[3]
                    if job.key not in seen:
                        seen.add(job.key)
                        jobs.append(job)
    return jobs


# ----------------------------------------------------------------------------- report


COLUMNS = [("kernel", 16), ("config", 14), ("dtype", 9), ("D", 4), ("variant", 19), ("arch", 6), ("regs", 4),
           ("shared", 7), ("spill", 6), ("mma", 15), ("s", 5), ("result", 0)]


def mma_text(row: dict) -> str:
    """``HGMMA n``, ``HMMA n``, both, ``none`` (a dot without tensor cores) or ``-`` (no dot)."""
    parts = [f"{name} {row[name.lower()]}" for name in ("HGMMA", "HMMA") if row[name.lower()]]
    return "+".join(parts) or ("none" if row["dot"] else "-")


def format_row(row: dict) -> str:
    if row["error"]:
        mma = shared = regs = spill = "?"
    else:
        mma = mma_text(row)
        shared, regs, spill = f"{row['shared'] / 1024:.0f}K", row["regs"], row["spill"]
    result = "; ".join(row["problems"]) or "ok"
    if not row["problems"] and row["arch"] == "sm_90a" and row["dot"] and row["hmma"] and not row["hgmma"]:
        result = "ok (mma.sync, no wgmma)"
    values = [row["kernel"], row["config"], row["dtype"], row["D"] or "-", row["variant"], row["arch"], regs,
              shared, spill, mma, f"{row['seconds']:.1f}", result]
    return "  ".join(str(v).ljust(w) for v, (_, w) in zip(values, COLUMNS)).rstrip()


def summary(rows: list[dict]) -> list[str]:
    """A Markdown table, one line per (kernel, arch, dtype): builds, failures, max registers, max shared
    memory, spilling builds, and which MMA the dots compiled to (wgmma: HGMMA, mma.sync: HMMA)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["kernel"], row["arch"], row["dtype"]), []).append(row)
    lines = ["| kernel | arch | dtype | builds | failing | max regs | max shared KiB | spilling | dots on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (kernel, arch, dtype), group in sorted(groups.items()):
        ok = [r for r in group if not r["error"]]
        dots = [r for r in ok if r["dot"]]
        if not dots:
            on = "no dot"
        else:
            kinds = {"HGMMA": sum(bool(r["hgmma"]) for r in dots),
                     "HMMA only": sum(bool(r["hmma"]) and not r["hgmma"] for r in dots),
                     "CUDA cores": sum(not r["hmma"] and not r["hgmma"] for r in dots)}
            on = ", ".join(f"{name} {n}/{len(dots)}" for name, n in kinds.items() if n)
        lines.append(f"| {kernel} | {arch} | {dtype} | {len(group)} | {sum(bool(r['problems']) for r in group)} | "
                     f"{max((r['regs'] for r in ok), default='?')} | "
                     f"{max((r['shared'] for r in ok), default=0) / 1024:.0f} | "
                     f"{sum(bool(r['spill']) for r in ok)} | {on} |")
    return lines


KERNEL_MODULES = ("mtmm_kernels.attention_triton", "mtmm_kernels.multitask_loss_triton")


def import_kernels() -> None:
    """Import the kernel modules as the GPU does: compiled jit functions, the GPU's autotune configs."""
    from triton.runtime.jit import JITFunction

    for name in KERNEL_MODULES:
        module = sys.modules.get(name)
        if module is not None and not any(isinstance(v, JITFunction) for v in vars(module).values()):
            raise RuntimeError(f"{name} was imported under TRITON_INTERPRET (interpreted kernels) before aot_check")
    os.environ.pop("TRITON_INTERPRET", None)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import importlib

    for name in KERNEL_MODULES:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI set: every kernel and dtype, heaviest cases")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="only this architecture (repeatable)")
    parser.add_argument("--jobs", type=int, default=0, help="compiler processes (default: the usable CPU cores)")
    parser.add_argument("--json", type=Path, help="also write every row to this JSON file")
    parser.add_argument("--failures-only", action="store_true", help="print only the failing rows")
    parser.add_argument("--kernel", action="append", help="only this kernel, e.g. _attn_bwd (repeatable)")
    parser.add_argument("--dtype", action="append", choices=DTYPES, help="only this input dtype (repeatable)")
    parser.add_argument("--list", action="store_true", help="print what would be built (signatures), build nothing")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")

    why = unavailable()
    if why:
        print(f"aot_check: skipped, nothing checked: {why}")
        return 0
    import_kernels()
    import triton

    start = time.perf_counter()
    archs = args.arch or list(ARCHS)
    JOBS[:] = [job for job in build_jobs(scenarios(args.quick, tuple(args.dtype or DTYPES)), archs)
               if not args.kernel or job.kernel_name in args.kernel]
    if args.list:
        for job in JOBS:
            source = prepare(job)[0]
            names = source.fn.arg_names
            constexprs = {names[path[0]] + "".join(f"[{i}]" for i in path[1:]): value
                          for path, value in source.constants.items()}
            print(f"{job.kernel_name} {config_label(job.config)} {job.scenario.dtype} D={job.scenario.head_dim} "
                  f"{job.scenario.variant} {job.arch} signature={source.signature} constexprs={constexprs}")
        return 0
    jobs = args.jobs or len(os.sched_getaffinity(0))
    print(f"aot_check: triton {triton.__version__}, {len(JOBS)} kernels to build for {', '.join(archs)} "
          f"({'quick' if args.quick else 'full'} set, {jobs} processes; cache {triton_cache_dir()})", flush=True)
    print("  ".join(name.ljust(w) for name, w in COLUMNS).rstrip())
    rows: list[dict] = []
    order = sorted(range(len(JOBS)), key=lambda i: -_expected_cost(JOBS[i]))  # long builds first
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        results = pool.imap_unordered(compile_job, order) if pool else map(compile_job, order)
        for row in results:
            rows.append(row)
            if row["problems"] or not args.failures_only:
                print(format_row(row), flush=True)
    rows.sort(key=lambda r: (r["kernel"], r["arch"], r["dtype"], r["D"] or 0, r["variant"], r["config"]))
    failing = [r for r in rows if r["problems"]]
    print()
    print("\n".join(summary(rows)))
    elapsed = time.perf_counter() - start
    print(f"\naot_check: {len(rows)} kernels built in {elapsed:.0f} s; {len(failing)} failing")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"triton": triton.__version__, "quick": args.quick, "seconds": elapsed,
                                         "rows": rows}, indent=1))
    return 1 if failing else 0


def _expected_cost(job: Job) -> int:
    """Rough compile cost, to start the slow builds first: bigger tiles and backward kernels take longest."""
    size = 1
    if job.config is not None:
        for key, value in job.config.kwargs.items():
            if key.startswith("BLOCK"):
                size *= value
    return size * (3 if "bwd" in job.kernel_name else 1) * (job.scenario.head_dim or 16)


if __name__ == "__main__":
    sys.exit(main())
