"""Typed head arguments at the config boundary: ``model.head_kwargs`` is checked against the chosen head's own
signature when the command line is parsed, and completed with the head's defaults.

``model.head`` stays a short name (``ccnet``, ``danet``, ...); the head class behind it
(:func:`seg.models.head_signature`) defines which ``head_kwargs`` exist, their types and defaults. So a misspelt
argument (``--model.head_kwargs.recurence=2``) fails at parse time naming the valid ones, a wrong type fails
naming the expected one, and ``--print_config`` / the run's ``config.yaml`` show every argument of the head with
its value. (A jsonargparse ``class_path`` for the head would do the typing too, but would change the config
format users and saved runs have, and could not keep the short names.)

Arguments whose type is a class (``norm_layer``, ``act_layer``) are not config values: they are set from Python
(``build_model(..., norm_layer=...)``); SyncBatchNorm under DDP is the trainer's ``sync_batchnorm``.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Mapping

import yaml
from jsonargparse import ArgumentParser

__all__ = ["HeadArgumentError", "config_arguments", "typed_head_kwargs"]


class HeadArgumentError(ValueError):
    """``model.head_kwargs`` does not fit the chosen head."""


def _is_class_argument(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is type:
        return True
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_is_class_argument(a) for a in args)
    return False


def config_arguments(head: str) -> tuple[Any, dict[str, tuple[inspect.Parameter, Any]], set[str]]:
    """``(builder, arguments, skipped)``: the head's builder, its config-settable keyword parameters by name (with
    their resolved type hints), and the names that are not config values (supplied by seg, or class-valued). Only
    the builder's own named parameters count: whatever its ``**kwargs`` forwards (smp: timm encoder arguments) is
    not a head argument."""
    from seg.models import head_signature

    builder, supplied = head_signature(head)
    try:
        hints = typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {}
    params = inspect.signature(builder).parameters
    skipped = set(supplied)
    arguments = {}
    for name, p in params.items():
        if name in supplied or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(name, p.annotation)
        if _is_class_argument(hint):
            skipped.add(name)
            continue
        arguments[name] = (p, hint)
    return builder, arguments, skipped


def typed_head_kwargs(head: str, head_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``head_kwargs`` checked against head ``head``'s signature, with every omitted argument at its default, as plain
    config values (lists, numbers, strings). Raises :class:`HeadArgumentError` naming the head, the bad key or
    value and the valid arguments."""
    try:
        builder, arguments, skipped = config_arguments(head)
    except ValueError as err:  # unknown head: the message lists the valid ones
        raise HeadArgumentError(f"model.head: {err}") from None
    given = dict(head_kwargs or {})
    label = f"head {head!r} ({getattr(builder, '__qualname__', builder)})"
    valid = ", ".join(arguments) or "none"
    for key in given:
        if key in arguments:
            continue
        if key in skipped:
            raise HeadArgumentError(
                f"model.head_kwargs.{key}: set by seg itself or a class, not a config value, for "
                f"{label}; the config can set: {valid}"
            )
        raise HeadArgumentError(
            f"model.head_kwargs.{key}: {label} has no argument {key!r}; its arguments are: {valid} "
            "(head_kwargs written for another head? --model.head_kwargs='{}' resets them)"
        )
    parser = ArgumentParser(exit_on_error=False)
    for name, (p, hint) in arguments.items():
        if p.default is inspect.Parameter.empty and name not in given:
            raise HeadArgumentError(f"model.head_kwargs.{name} is required by {label}")
        typed = {} if hint is inspect.Parameter.empty else {"type": hint}
        default = None if p.default is inspect.Parameter.empty else p.default
        parser.add_argument(f"--{name}", default=default, **typed)
    try:
        namespace = parser.parse_object(given)
    except Exception as err:  # jsonargparse names the key and the expected type
        raise HeadArgumentError(
            f"model.head_kwargs for {label}: {_one_line(err)}; its arguments are: {valid}"
        ) from None
    return dict(yaml.safe_load(parser.dump(namespace, skip_unset=False)) or {})


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).strip().splitlines())
    return text or type(err).__name__
