"""Built-in data sets."""

from mtmm_core import hookimpl
from mtmm_plugins.datasets.avdigits import AVDigits


@hookimpl
def register_datasets(register):
    register("avdigits", AVDigits, description="Real 8x8 digit images paired with real spoken digits (MFCC); 4 tasks.")
