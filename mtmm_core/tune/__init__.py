"""Hyper-parameter search with Optuna: ``mtmm tune CONFIG`` and :func:`tune`.

A config's ``tune`` section names the config keys to search (``tune.space``) and how:

.. code-block:: yaml

    tune:
      trials: 20            # trials the study should hold when done (--trials overrides)
      metric: null          # the validation metric to optimise; default train.monitor
      sampler: tpe          # tpe | random | grid
      pruner: median        # median | none, or {name: median, startup_trials: 5, warmup_epochs: 1}
      space:
        train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}    # a float range (log-uniform)
        model.fusion.dim: {low: 32, high: 128, step: 32}     # ints when low, high and step are ints
        model.fusion.name: [concat, gated]                   # a list: one of these values

Each trial is an ordinary run folder ``OUT/trial-000``, ``OUT/trial-001``, ... trained by
:func:`mtmm_core.train` with the trial's values as ``--set`` overrides. The study lives in
``OUT/study.db`` (SQLite), so ``mtmm tune --resume OUT`` continues it. ``OUT/summary.csv`` lists
every trial and ``OUT/best.yaml`` is the full config of the best one (``mtmm train OUT/best.yaml``).
Optuna is an optional dependency (``pip install 'mtmm[tune]'``), imported only here, only when tuning.

The package: :mod:`~mtmm_core.tune.space` reads and checks the ``tune`` section,
:mod:`~mtmm_core.tune.study` runs the trials, :mod:`~mtmm_core.tune.report` writes what they gave.
"""

from mtmm_core.tune.report import BEST_FILE, SUMMARY_FILE, TrialResult, TuneResult, best_config, format_value
from mtmm_core.tune.space import SearchParam, parse_param, parse_space, tune_settings
from mtmm_core.tune.study import import_optuna, run_tune, tune

__all__ = ["BEST_FILE", "SUMMARY_FILE", "SearchParam", "TrialResult", "TuneResult", "best_config", "format_value",
           "import_optuna", "parse_param", "parse_space", "run_tune", "tune", "tune_settings"]
