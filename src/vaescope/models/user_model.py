"""A model the user names: ``package.module:factory`` (``--model``, ``model.factory``), with optional
safetensors weights.

The one place vaescope imports and runs a user's code: only ever with a reference the user gave.
Weights are read with safetensors, never unpickled.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from vaescope.core.config import ModelConfig
from vaescope.core.errors import VaescopeError


def load_factory(reference: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names. This imports (runs) the user's module:
    only ever called with a reference the user gave (``--model``, ``model.factory``)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise VaescopeError(f"model factory {reference!r} is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may raise anything while importing
        raise VaescopeError(f"model factory {reference!r}: cannot import {module_name!r} "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                            "check the module path and that it is importable (PYTHONPATH)") from err
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise VaescopeError(f"model factory {reference!r}: {module_name!r} has no {attribute!r}; check the name")
    if not callable(factory):
        raise VaescopeError(f"model factory {reference!r} is not callable; name a function or class")
    return factory


def load_user_model(reference: str, image_shape: tuple[int, ...], weights: str | Path | None = None) -> nn.Module:
    """The model ``package.module:factory`` builds (this imports and runs the user's code).

    The factory is called with no argument, with ``image_shape`` ``(C, H, W)`` when it takes one,
    or with ``(image_shape, ModelConfig)`` when it takes two (the ``model.factory`` contract).
    ``weights``: a safetensors file loaded with ``load_state_dict`` (strict).
    """

    factory = load_factory(reference)
    try:
        required = [p for p in inspect.signature(factory).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # no signature (a builtin): call it bare
        required = []
    arguments: tuple[Any, ...] = ((), (tuple(image_shape),),
                                  (tuple(image_shape), ModelConfig(factory=reference)))[min(len(required), 2)]
    try:
        model = factory(*arguments)
    except Exception as err:  # the user's code may raise anything
        first = str(err).splitlines()[0] if str(err) else ""
        raise VaescopeError(f"--model {reference!r} raised {type(err).__name__}: {first}; fix the factory") from err
    if not isinstance(model, nn.Module):
        raise VaescopeError(f"--model {reference!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, Path(weights), reference)
    return model.eval()


def _load_weights(model: nn.Module, path: Path, reference: str) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise VaescopeError(f"--weights {path} is not a .safetensors file; vaescope never unpickles weights "
                            "(save them with safetensors.torch.save_file(model.state_dict(), ...))")
    try:
        state = load_file(str(path))
    except FileNotFoundError as err:
        raise VaescopeError(f"--weights {path} does not exist; check the path") from err
    except (SafetensorError, OSError, ValueError) as err:
        raise VaescopeError(f"--weights {path} is not a readable safetensors file ({err}); check the file") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise VaescopeError(f"--weights {path} do not fit the model {reference!r} builds ({detail}); give the "
                            "weights saved from that model") from err

