"""Check a ``_target_`` config group against the signature of what it names, before anything is built.

Hydra's struct mode already rejects a misspelt key of an existing config, but not a wrong type
(``method.temperature=abc`` composes fine) and not a key added with ``+`` that the constructor does not
take. Both would otherwise surface minutes later as a wrapped ``TypeError`` from deep inside
``instantiate``. The constructor's own annotations say what each argument accepts, so a method or
sampler added later is checked without a line here.
"""
from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from cl_suite.errors import UserError, as_written

# Hydra's own keys of a ``_target_`` node, never constructor arguments.
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


class ArgumentError(UserError, ValueError):
    """A group value that does not fit its constructor. The message names the key."""


_NAMES = {bool: ("true/false", "booleans"), int: ("an integer", "integers"),
          float: ("a finite number", "finite numbers"),
          str: ("a string", "strings"), dict: ("a mapping", "mappings"), type(None): ("null", "nulls")}


def _describe(hint: Any, plural: bool = False) -> str:
    """``hint`` in words: "an integer", "a list of integers", "a list of 2 numbers or null"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a, plural) for a in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {_describe(args[0], plural=True)}"
        return f"a list of {_describe(args[0], plural=True)}" if args else "a list"
    name = getattr(hint, "__name__", str(hint))
    return _NAMES.get(hint, (name, name + "s"))[plural]


def value_fits(value: Any, hint: Any) -> bool:
    """Whether a plain config value (from ``OmegaConf.to_container``) can be passed where ``hint`` is
    annotated. Types that configs cannot express (modules, tensors) are not judged."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, (str, typing.TypeVar)):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # nan and inf are no setting's meaning: a nan temperature trains to chance level
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(value, int) or math.isfinite(value))
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length: tuple[float, float]
            return len(value) == len(args) and all(value_fits(v, a) for v, a in zip(value, args))
        return not args or all(value_fits(v, args[0]) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _type_hints(target: Any) -> dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation this Python cannot evaluate: judge nothing rather than fail
        return {}


def check_group_arguments(group: str, node: DictConfig, injected: Sequence[str] = (),
                          suite_keys: Sequence[str] = ()) -> None:
    """Every key of ``node`` must be an argument of its ``_target_`` with a value of the annotated type,
    and every required argument must be set (``injected``: filled in by the code at build time;
    ``suite_keys``: read by the suite, not passed to the constructor)."""
    target_name = node.get("_target_")
    if not isinstance(target_name, str):
        raise ArgumentError(f"{group}._target_={as_written(target_name)} is not allowed: expected an import path")
    try:
        target = get_object(target_name)
    except Exception as err:
        raise ArgumentError(f"{group}._target_={target_name!r} cannot be imported: {err}") from None
    params = inspect.signature(target).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _type_hints(target)
    for key in node:
        if key in HYDRA_KEYS or key in suite_keys:
            continue
        if OmegaConf.is_missing(node, key):
            raise ArgumentError(f"{group}.{key} is required but not set (???): pass {group}.{key}=<value>")
        if key not in params and not takes_any:
            allowed = sorted(k for k, p in params.items() if k not in injected and k != "self"
                             and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD))
            near = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(f'{group}.{k}' for k in near)}? " if near else ""
            raise ArgumentError(f"{group}.{key} is not a setting of {target_name}; {hint}"
                                f"allowed: {', '.join(allowed) or '(none)'} (a recipe's setting for another "
                                f"{group}: drop it with '~{group}.{key}')")
        value = node[key]  # interpolations resolve on access
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if key in hints and not value_fits(value, hints[key]):
            raise ArgumentError(f"{group}.{key}={as_written(value)} is not allowed: expected {_describe(hints[key])}")
    for key, param in params.items():
        if (param.default is inspect.Parameter.empty and key not in node and key not in injected
                and param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)):
            raise ArgumentError(f"{group}.{key} is required by {target_name} but not set: pass +{group}.{key}=<value>")
