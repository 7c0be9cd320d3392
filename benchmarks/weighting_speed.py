"""Speed of every gradient-level weighting's ``combine`` against TorchJD's same aggregator, on one Jacobian.

    python benchmarks/weighting_speed.py                      # 10 tasks x 1e6 parameters, 5 reps, 1 thread
    python benchmarks/weighting_speed.py --reps 9 --threads 2 --regimes random
    python benchmarks/weighting_speed.py --methods mgda,upgrad --tasks 4 --params 100000

For each registered gradient-level weighting (``gradient_level`` True in ``BUILTIN_WEIGHTINGS``)
this times ``combine(J, losses)`` on a float32 Jacobian ``J [T, P]`` against a reference on the
same ``J`` in the same process:

- TorchJD's aggregator for the same method (``torchjd.aggregation``; constructor arguments
  chosen to follow mtmm's conventions where TorchJD has a switch for it, see ``REFERENCES``);
- otherwise (no TorchJD counterpart, or TorchJD not installed) the Gramian-based cost: ``G = J J^T``
  and one weighted sum ``w J``, the two passes over ``J`` any Gramian method makes.

The calls are interleaved (each rep times every method, mtmm and reference in alternating
order, so a busy machine slows both alike); every callable is warmed up once; the table shows
medians, ``ratio`` = mtmm / reference (the target is at most 1.2); ``ratio of mins`` is the
same for the fastest rep of each and ``ratio CPU time`` the ratio of the median process CPU
times; both are less sensitive to other processes on a shared machine. ``x floor`` is mtmm
over the Gramian-based cost, timed in the same reps.

For each method with a TorchJD counterpart the combined vectors are compared (fresh
instances, the same torch seed): cosine, ``|mtmm| / |torchjd|`` and
``max |mtmm - torchjd| / max |torchjd|``, on the benchmark's ``J`` and on a small
well-conditioned ``J [5, 1000]``, so a difference of convention (a constant factor) shows;
``cosine vs TorchJD f64`` compares with TorchJD run on a float64 copy of ``J``, which tells
float32 rounding inside TorchJD from a difference of method.

TorchJD is optional: ``pip install "torchjd[quadprog_projector,cagrad,fairgrad,nash_mtl]==0.18.0" ecos``.
Writes JSON to ``benchmarks/results/weighting_speed_<device>_<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from mtmm_plugins.weightings import BUILTIN_WEIGHTINGS

RESULTS = Path(__file__).resolve().parent / "results"
REGIMES = ("random", "norm1e3", "conflict")
REGIME_NOTES = {
    "random": "i.i.d. N(0, 1) entries (rows nearly orthogonal)",
    "norm1e3": "N(0, 1) rows scaled by logspace(0, -3, T): largest / smallest norm = 1e3",
    "conflict": "N(0, 1) + (+1 / -1 alternating) x a shared N(0, 1) row: cosines about +-0.5",
}

# TorchJD's NashMTL builds a cvxpy problem that is not DPP; cvxpy says so at every solve.
warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")

try:
    import torchjd.aggregation as tja

    TORCHJD_VERSION: str | None = importlib.metadata.version("torchjd")
    TORCHJD_ERROR: str | None = None
except Exception as error:  # noqa: BLE001 - any import failure means "not available"
    tja, TORCHJD_VERSION, TORCHJD_ERROR = None, None, f"{type(error).__name__}: {error}"


def _attr(weighting: Any, names: tuple[str, ...], default: Any) -> Any:
    """The first of ``names`` that ``weighting`` has (a constructor argument kept as an attribute)."""
    for name in names:
        if hasattr(weighting, name):
            return getattr(weighting, name)
    return default


def _preferences(weighting: Any, dtype: torch.dtype) -> torch.Tensor | None:
    """mtmm's ``preferences`` as TorchJD's ``pref_vector`` (None: both libraries' default)."""
    preferences = getattr(weighting, "preferences", None)
    return None if preferences is None else torch.as_tensor(preferences, dtype=dtype)


def _with_preferences(cls_name: str):
    def build(weighting: Any, tasks: int, dtype: torch.dtype):
        preferences = _preferences(weighting, dtype)
        return getattr(tja, cls_name)(pref_vector=preferences), \
            f"{cls_name}()" if preferences is None else f"{cls_name}(pref_vector=preferences)"
    return build


def _nash(weighting: Any, tasks: int, dtype: torch.dtype):
    # mtmm's max_norm defaults to 0 (off), TorchJD's to 1.0: pass mtmm's
    max_norm = float(_attr(weighting, ("max_norm",), 0.0) or 0.0)
    every = int(_attr(weighting, ("update_every", "update_weights_every"), 1))
    return (tja.NashMTL(n_tasks=tasks, max_norm=max_norm, update_weights_every=every),
            f"NashMTL(n_tasks={tasks}, max_norm={max_norm:g})")


def _graddrop(weighting: Any, tasks: int, dtype: torch.dtype):
    leak = getattr(weighting, "leak", None)
    if isinstance(leak, torch.Tensor) and bool(leak.any()):
        return tja.GradDrop(leak=leak.to(dtype)), "GradDrop(leak=mtmm's)"
    return tja.GradDrop(), "GradDrop()"


#: mtmm registry name -> (mtmm instance, T, dtype of J) -> (TorchJD aggregator, its description).
REFERENCES: dict[str, Callable[[Any, int, torch.dtype], tuple[Any, str]]] = {
    "pcgrad": lambda w, t, d: (tja.PCGrad(), "PCGrad()"),
    "mgda": lambda w, t, d: (tja.MGDA(), "MGDA() (Frank-Wolfe, eps 1e-3)"),
    "cagrad": lambda w, t, d: (tja.CAGrad(c=float(_attr(w, ("c",), 0.4))), f"CAGrad(c={_attr(w, ('c',), 0.4):g})"),
    "imtl_g": lambda w, t, d: (tja.IMTLG(), "IMTLG()"),
    # mtmm sums the aligned gradients (alpha = B 1); TorchJD averages unless pref_vector = ones.
    "aligned_mtl": lambda w, t, d: (tja.AlignedMTL(pref_vector=torch.ones(t, dtype=d)),
                                    "AlignedMTL(pref_vector=ones)"),
    "upgrad": _with_preferences("UPGrad"),  # both default to the mean of the projections
    "dualproj": _with_preferences("DualProj"),  # both project the mean
    "config": _with_preferences("ConFIG"),  # both default to ones (the length: sum of projections)
    "nash_mtl": _nash,
    "fairgrad": lambda w, t, d: (tja.FairGrad(alpha=float(_attr(w, ("alpha",), 1.0))),
                                 f"FairGrad(alpha={_attr(w, ('alpha',), 1.0):g})"),
    "gradvac": lambda w, t, d: (tja.GradVac(beta=float(_attr(w, ("beta",), 0.5))),
                                f"GradVac(beta={_attr(w, ('beta',), 0.5):g})"),
    "graddrop": _graddrop,
}


#: Methods whose random draw (``torch.rand`` in J's dtype) differs on a float64 copy: not compared there.
DRAWS_IN_DTYPE = {"graddrop"}


def make_jacobian(regime: str, tasks: int, params: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(tasks, params, generator=generator)
    if regime == "norm1e3":
        jacobian *= torch.logspace(0, -3, tasks).unsqueeze(1)
    elif regime == "conflict":
        signs = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(tasks)]).unsqueeze(1)
        jacobian.addcmul_(signs, torch.randn(1, params, generator=generator))
    elif regime != "random":
        raise ValueError(f"unknown regime {regime!r}; choose from {', '.join(REGIMES)}")
    return jacobian


def gramian_cost(jacobian: torch.Tensor) -> torch.Tensor:
    """The floor of a Gramian-based method: ``G = J J^T`` and ``w J`` (``w`` read off ``G``)."""
    gram = jacobian @ jacobian.T
    weights = gram.diagonal().rsqrt()
    return weights @ jacobian


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    a, b = ours.detach().double().flatten(), theirs.detach().double().flatten()
    norm_a, norm_b = float(a.norm()), float(b.norm())
    cosine = float(a @ b) / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else float("nan")
    top = float(b.abs().max()) if b.numel() else 0.0
    return {"cosine": cosine, "norm_ratio": norm_a / norm_b if norm_b > 0 else float("nan"),
            "max_rel_diff": float((a - b).abs().max()) / top if top > 0 else float("nan")}


def seeded(fn: Callable[[], torch.Tensor], seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return fn()


def agreement(factory, name: str, jacobian: torch.Tensor, losses: torch.Tensor, seed: int = 1) -> dict[str, Any]:
    """Combined vectors of fresh mtmm and TorchJD instances on ``jacobian``, the same torch seed for both."""
    task_names = [f"t{i}" for i in range(jacobian.shape[0])]
    try:
        ours_weighting = factory(tasks=task_names)
        reference, _ = REFERENCES[name](ours_weighting, jacobian.shape[0], jacobian.dtype)
        with torch.no_grad():
            ours = seeded(lambda: ours_weighting.combine(jacobian, losses), seed)
            theirs = seeded(lambda: reference(jacobian), seed)
            result = compare(ours, theirs)
            del theirs
    except Exception as error:  # noqa: BLE001 - reported, the benchmark goes on
        return {"error": f"{type(error).__name__}: {error}"}
    if name in DRAWS_IN_DTYPE:
        result["vs_torchjd_float64"] = {"skipped": "its random draw depends on the dtype"}
        return result
    try:  # TorchJD (a fresh instance) on a float64 copy of J: which side float32 rounding moved
        reference64, _ = REFERENCES[name](factory(tasks=task_names), jacobian.shape[0], torch.float64)
        with torch.no_grad():
            result["vs_torchjd_float64"] = compare(ours, seeded(lambda: reference64(jacobian.double()), seed))
    except Exception as error:  # noqa: BLE001
        result["vs_torchjd_float64"] = {"error": f"{type(error).__name__}: {error}"}
    return result


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process CPU time of ``fn()`` in ms (CPU time: not counting time other processes took the core)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    if isinstance(result, torch.Tensor) and result.is_cuda:
        torch.cuda.synchronize()
    elapsed, elapsed_cpu = (time.perf_counter() - start) * 1e3, (time.process_time() - start_cpu) * 1e3
    del result
    return elapsed, elapsed_cpu


def cpu_info() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"processor": platform.processor(), "model_name": model, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def git_state() -> dict[str, Any]:
    """The commit measured and whether the tree had local changes (None outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        return {"commit": commit, "modified_tracked_files": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "modified_tracked_files": None}


def gradient_level_names(selected: str | None) -> list[str]:
    names = [name for name, factory in BUILTIN_WEIGHTINGS.items() if getattr(factory, "gradient_level", False)]
    if selected:
        wanted = [name.strip() for name in selected.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in names]
        if unknown:
            raise SystemExit(f"not registered gradient-level weightings: {', '.join(unknown)} "
                             f"(registered: {', '.join(names)})")
        names = [name for name in names if name in wanted]
    return names


def setup_methods(names: list[str], tasks: int, use_torchjd: bool) -> tuple[dict[str, dict], dict[str, str]]:
    """Per method: the mtmm instance and its reference (TorchJD aggregator or the Gramian cost)."""
    task_names = [f"t{i}" for i in range(tasks)]
    methods, skipped = {}, {}
    for name in names:
        try:
            ours = BUILTIN_WEIGHTINGS[name](tasks=task_names)
        except Exception as error:  # noqa: BLE001
            skipped[name] = f"construction failed: {type(error).__name__}: {error}"
            continue
        entry = {"ours": ours, "reference": None, "reference_name": "gramian cost (J J^T + w J)",
                 "reference_kind": "gramian", "reference_note": None}
        if use_torchjd and name in REFERENCES:
            try:
                entry["reference"], entry["reference_name"] = REFERENCES[name](ours, tasks, torch.float32)
                entry["reference_kind"] = "torchjd"
            except Exception as error:  # noqa: BLE001 - e.g. a missing optional dependency of TorchJD
                entry["reference_note"] = f"TorchJD {name} unavailable ({type(error).__name__}: {error})"
        elif name in REFERENCES:
            entry["reference_note"] = "TorchJD not installed"
        methods[name] = entry
    return methods, skipped


def run_regime(regime: str, args, names: list[str], use_torchjd: bool) -> dict[str, Any]:
    jacobian = make_jacobian(regime, args.tasks, args.params, args.seed).to(args.device)
    losses = (torch.rand(args.tasks, generator=torch.Generator().manual_seed(args.seed + 1)) + 0.5).to(args.device)
    methods, skipped = setup_methods(names, args.tasks, use_torchjd)

    agreements = {}
    if use_torchjd:
        for name, entry in methods.items():
            if entry["reference_kind"] == "torchjd":
                agreements[name] = agreement(BUILTIN_WEIGHTINGS[name], name, jacobian, losses)

    floor = lambda: gramian_cost(jacobian)  # noqa: E731
    calls = {}
    for name, entry in methods.items():
        ours, reference = entry["ours"], entry["reference"]
        calls[name] = (lambda ours=ours: ours.combine(jacobian, losses),
                       floor if reference is None else (lambda reference=reference: reference(jacobian)))
    samples = {name: {"mtmm": [], "reference": []} for name in calls}
    cpu_samples = {name: {"mtmm": [], "reference": []} for name in calls}
    samples_floor = []
    errors = {}
    with torch.no_grad():
        timed(floor)  # warm-up
        for name, (ours_call, reference_call) in list(calls.items()):
            try:
                timed(ours_call)
            except Exception as error:  # noqa: BLE001
                errors[name] = f"mtmm combine failed: {type(error).__name__}: {error}"
                traceback.print_exc()
            try:
                timed(reference_call)
            except Exception as error:  # noqa: BLE001
                errors[name] = errors.get(name, "") + f" reference failed: {type(error).__name__}: {error}"
                traceback.print_exc()
            if name in errors:
                del calls[name]
        for rep in range(args.reps):
            samples_floor.append(timed(floor)[0])
            for index, (name, (ours_call, reference_call)) in enumerate(calls.items()):
                order = [("mtmm", ours_call), ("reference", reference_call)]
                if (rep + index) % 2:
                    order.reverse()
                for side, call in order:
                    wall, cpu = timed(call)
                    samples[name][side].append(wall)
                    cpu_samples[name][side].append(cpu)
            gc.collect()
    floor_ms = statistics.median(samples_floor)
    rows = []
    for name, entry in methods.items():
        row = {"method": name, "class": type(entry["ours"]).__name__, "reference": entry["reference_name"],
               "reference_kind": entry["reference_kind"], "reference_note": entry["reference_note"]}
        if name in errors:
            row["error"] = errors[name]
        else:
            ours_ms = statistics.median(samples[name]["mtmm"])
            reference_ms = statistics.median(samples[name]["reference"])
            paired = [a / b for a, b in zip(samples[name]["mtmm"], samples[name]["reference"])]
            row.update(mtmm_ms=ours_ms, reference_ms=reference_ms, ratio=ours_ms / reference_ms,
                       paired_ratio_median=statistics.median(paired), x_floor=ours_ms / floor_ms,
                       mtmm_min_ms=min(samples[name]["mtmm"]), reference_min_ms=min(samples[name]["reference"]),
                       ratio_of_mins=min(samples[name]["mtmm"]) / min(samples[name]["reference"]),
                       ratio_cpu_time=statistics.median(cpu_samples[name]["mtmm"])
                       / statistics.median(cpu_samples[name]["reference"]),
                       mtmm_cpu_samples_ms=cpu_samples[name]["mtmm"],
                       reference_cpu_samples_ms=cpu_samples[name]["reference"],
                       mtmm_samples_ms=samples[name]["mtmm"], reference_samples_ms=samples[name]["reference"])
        if name in agreements:
            row["agreement"] = agreements[name]
        rows.append(row)
    del calls, methods, jacobian
    gc.collect()
    return {"regime": regime, "note": REGIME_NOTES[regime], "floor_ms": floor_ms, "floor_samples_ms": samples_floor,
            "rows": rows, "skipped": skipped}


def small_agreement(names: list[str], seed: int) -> dict[str, dict]:
    """The same comparison on a small well-conditioned ``J [5, 1000]`` (cond(J) about 1.1)."""
    jacobian = torch.randn(5, 1000, generator=torch.Generator().manual_seed(seed + 7))
    losses = torch.rand(5, generator=torch.Generator().manual_seed(seed + 8)) + 0.5
    return {name: agreement(BUILTIN_WEIGHTINGS[name], name, jacobian, losses) for name in names if name in REFERENCES}


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def print_tables(regimes: list[dict], small: dict[str, dict]) -> None:
    for result in regimes:
        print(f"\n### regime `{result['regime']}`: {result['note']}; Gramian floor {result['floor_ms']:.1f} ms\n")
        print("| method | mtmm ms | reference | reference ms | ratio | ratio of mins | ratio CPU time | cosine | "
              "norm ratio | max rel diff | cosine vs TorchJD f64 | x floor |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for row in result["rows"]:
            agreement_row = row.get("agreement", {})
            if "error" in row:
                print(f"| {row['method']} | error | {row['reference']} | - | - | - | - | - | - | - | - | - |")
                continue
            flag = " **>1.2**" if row["ratio"] > 1.2 else ""
            print(f"| {row['method']} | {row['mtmm_ms']:.1f} | {row['reference']} | {row['reference_ms']:.1f} | "
                  f"{row['ratio']:.2f}{flag} | {row['ratio_of_mins']:.2f} | {row['ratio_cpu_time']:.2f} | "
                  f"{fmt(agreement_row.get('cosine'), '.6f')} | "
                  f"{fmt(agreement_row.get('norm_ratio'), '.4f')} | {fmt(agreement_row.get('max_rel_diff'), '.1e')} | "
                  f"{fmt(agreement_row.get('vs_torchjd_float64', {}).get('cosine'), '.6f')} | {row['x_floor']:.2f} |")
        for row in result["rows"]:
            for key in ("error", "reference_note"):
                if row.get(key):
                    print(f"- {row['method']}: {row[key]}")
            if "error" in row.get("agreement", {}):
                print(f"- {row['method']} agreement: {row['agreement']['error']}")
        for name, why in result["skipped"].items():
            print(f"- {name}: skipped, {why}")
    if small:
        print("\n### agreement on a small well-conditioned J [5, 1000] (fresh instances, same torch seed)\n")
        print("| method | cosine | norm ratio | max rel diff | cosine vs TorchJD f64 |")
        print("|---|---|---|---|---|")
        for name, values in small.items():
            if "error" in values:
                print(f"| {name} | error: {values['error']} | | | |")
            else:
                print(f"| {name} | {values['cosine']:.6f} | {values['norm_ratio']:.4f} | "
                      f"{values['max_rel_diff']:.1e} | "
                      f"{fmt(values.get('vs_torchjd_float64', {}).get('cosine'), '.6f')} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: steadier timings)")
    parser.add_argument("--regimes", default=",".join(REGIMES), help=f"comma-separated, from {', '.join(REGIMES)}")
    parser.add_argument("--methods", default=None,
                        help="comma-separated registry names (default: every gradient-level one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-torchjd", action="store_true", help="time against the Gramian cost only")
    parser.add_argument("--no-json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = gradient_level_names(args.methods)
    regimes = [name.strip() for name in args.regimes.split(",") if name.strip()]
    use_torchjd = tja is not None and not args.no_torchjd
    print(f"mtmm gradient-level weightings: {', '.join(names)}")
    print(f"J [{args.tasks}, {args.params}] float32 on {args.device}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); reps {args.reps} (medians, interleaved, 1 warm-up each)")
    if use_torchjd:
        print(f"reference: TorchJD {TORCHJD_VERSION} where it has the method, else the Gramian cost (J J^T + w J)")
    else:
        why = "--no-torchjd" if args.no_torchjd else f"TorchJD not importable ({TORCHJD_ERROR})"
        print(f"reference: the Gramian cost (J J^T + w J) for every method; {why}")
    started = time.perf_counter()
    results = []
    for regime in regimes:
        results.append(run_regime(regime, args, names, use_torchjd))
    small = small_agreement(names, args.seed) if use_torchjd else {}
    elapsed = time.perf_counter() - started
    print_tables(results, small)
    print(f"\n{elapsed:.0f} s in all")
    if args.no_json:
        return 0
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"weighting_speed_{args.device}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": args.device, "tasks": args.tasks, "params": args.params, "dtype": "float32", "reps": args.reps,
            "threads": torch.get_num_threads(), "seed": args.seed, "torch": torch.__version__,
            "torchjd": TORCHJD_VERSION if use_torchjd else None, "torchjd_error": TORCHJD_ERROR,
            "numpy": importlib.metadata.version("numpy"), "cpu": cpu_info(), "git": git_state(), "methods": names,
            "target_ratio": 1.2, "elapsed_s": elapsed,
            "timing": "per rep: Gramian floor, then each method mtmm and reference in alternating order; medians"}
    out.write_text(json.dumps({"meta": meta, "regimes": results, "small_agreement": small}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
