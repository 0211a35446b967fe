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


def as_written(value: Any) -> str:
    """``value`` as a user writes it in a config file or an override, for error messages: ``null``,
    ``true``/``false``, ``'text'``, ``0.1``, ``[1, 2]``, ``{a: 1}`` (Python's repr would say None, True)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if type(value).__module__.startswith("omegaconf"):  # a ListConfig / DictConfig node
        from omegaconf import OmegaConf

        return as_written(OmegaConf.to_container(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(as_written(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {as_written(v)}" for k, v in value.items()) + "}"
    return repr(value)


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
