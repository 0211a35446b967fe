"""The suite's own error base class, below every other module.

An error that derives from :class:`UserError` is about what the user asked for or supplied (a config
value, a missing data set, an unusable checkpoint or run folder, a run that diverged), and its message
alone says what is wrong and how to fix it. ``train.py`` and ``evaluate.py`` print such a message
without a traceback and exit with status 1; ``HYDRA_FULL_ERROR=1`` shows the traceback. Each concrete
error also derives from the built-in class it refines (``ValueError``, ``FileNotFoundError`` ...), so
callers can catch it either way.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable


class UserError(Exception):
    """Base of the errors whose message is the whole story (see the module docstring)."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work. The message names the key."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder named on the command line (a run dir, a checkpoint, a sweep dir) that does not
    exist or is not what the setting expects. The message names the setting and the path."""


def _compact_error(message: str) -> Exception:
    # Hydra prints a CompactHydraException's text alone (no traceback), in single runs and for the
    # failed job of a sweep, and exits with status 1. Imported here: this module stays import-light.
    from hydra.errors import CompactHydraException

    return CompactHydraException(message)


def user_errors_without_traceback(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a Hydra task function so that a :class:`UserError` reaches the terminal as its message."""

    @functools.wraps(task)
    def wrapped(cfg):
        try:
            return task(cfg)
        except UserError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            # Hydra adds its own line on HYDRA_FULL_ERROR=1, so the message is all we print.
            raise _compact_error(f"error: {err}") from None

    return wrapped
