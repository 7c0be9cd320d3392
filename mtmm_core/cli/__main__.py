"""``python -m mtmm_core.cli``: the ``mtmm`` command (torchrun starts its processes this way)."""

import sys

from mtmm_core.cli import main

sys.exit(main())
