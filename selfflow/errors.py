"""The errors every part of selfflow may raise, in a leaf module that imports nothing of ours.

The command line maps them to exit statuses: :class:`ConfigError` is 2 (fix the command or the
config file), :class:`TrainingError` and :class:`ParamsError` are 1 (the run or file is unusable).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and what was expected."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss or gradient, incompatible run directory)."""


class ParamsError(ValueError):
    """Weights that do not match the model (the message lists every problem)."""
