"""The exceptions mtmm raises; each message says what was wrong and what would be valid."""

from __future__ import annotations


class MtmmError(Exception):
    """Base class of mtmm's own errors."""


class PluginError(MtmmError):
    """A plugin could not be loaded or broke the hook contract."""


class UnknownComponentError(MtmmError, KeyError):
    """No component of that kind has that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AmbiguousComponentError(MtmmError):
    """Several distributions registered the same (kind, name)."""


class SpecError(MtmmError, ValueError):
    """A model spec or config is invalid; the message starts with the path in the spec."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class NonFiniteError(MtmmError, FloatingPointError):
    """A task's loss or gradient is NaN or infinite; the message names the task and the weighting."""


class UsageError(MtmmError, ValueError):
    """A bad command-line value, config value or file the user named; the CLI exits with status 2."""


class RunError(MtmmError, RuntimeError):
    """Training or evaluation could not go on (disk full, a run folder in use, a stalled process);
    the CLI exits with status 1."""


class ComponentError(MtmmError, RuntimeError):
    """A component (often a plugin's) failed while running; the message names its kind, registered
    name and distribution, and the original exception is chained (``__cause__``) with its traceback."""
