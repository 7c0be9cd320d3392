"""The parts of ``benchmarks/gpu_suite.py``, one module per concern; the script runs them in order.

- ``importable``: makes ``mtmm_kernels``, ``mtmm_core`` and the plugins importable from a plain
  checkout (``ensure_importable``), before anything imports them.
- ``common``: what every section uses: the section names, ``Budget``, ``Context``, JSON helpers
  and the timing (``time_calls``, ``sync``, peak memory, kernel counts).
- ``environment``: sections 1 and 2, the machine (versions, ``nvidia-smi``, git) and its ceilings.
- ``correctness``: section 3, the fused kernels against their float64 references.
- ``speed_tables``: sections 4 and 5, the attention and multitask-loss timing tables.
- ``train_step``: section 6, one optimiser step of the default model.
- ``pytest_section``: section 7, the kernel test files in a subprocess.
- ``summary``: the summary printed at the end of a run.

Nothing here is imported by mtmm itself; ``benchmarks/`` (this package's parent) must be on
``sys.path``, which ``gpu_suite.py`` sees to.
"""
