"""The instrument never touches the model: one policy, written once, for every analysis.

:func:`untouched` is the block every measure runs its forwards in. On entry it

1. records every submodule's ``training`` flag and sets each one to False (BatchNorm reads its
   running statistics and does not update them; Dropout is the identity). The flags are set
   directly rather than through ``model.eval()``: no user code runs except the forwards the
   measure asks for, and a ``train()`` override cannot keep a part in training mode;
2. enters ``torch.no_grad()``: no graph is built, so no ``.grad`` can change and no memory is
   held for backward. Not ``torch.inference_mode()``: tensors made under it are "inference
   tensors" for ever, and a model that caches a tensor during a forward (a lazily built positional
   table, a mask, a lazy module's parameter) would hand the user's next training step a tensor that
   autograd refuses ("Inference tensors cannot be saved for backward"); the outputs a measure
   returns would carry the same restriction. no_grad costs almost nothing more;
3. saves the global random states: torch's CPU generator, every CUDA device's when CUDA is
   initialised (read without initialising it; when the block itself initialises CUDA, each CUDA
   generator is put back at the start of its stream, as the user's first CUDA draw would find it),
   NumPy's legacy global ``np.random`` state, and Python's ``random``;
4. yields a dedicated ``torch.Generator`` on the model's device, seeded with ``seed`` (None: a
   fresh non-deterministic seed from the operating system, not drawn from any global generator;
   read it back with ``generator.initial_seed()`` to report it). Measures that sample draw from it,
   so their numbers do not depend on, nor change, the user's random streams.

On exit, normally or on an exception, every submodule's flag and every random state is put back
exactly as it was (so the user's next ``torch.randn`` gives what it would have given). Blocks nest:
each restores what it found. A block holds :data:`vaescope.core.randomness.GLOBAL_RNG_LOCK` from
entry to exit, so a block in one thread cannot write an old state back in the middle of another
thread's seeded initialisation (worker threads set up and measure runs side by side).

What it does not do: it cannot undo a forward that writes to the model on purpose in eval mode
(a buffer updated in place whatever the mode). :func:`model_fingerprint` is there to catch that in
tests: it hashes every parameter, buffer, gradient, ``requires_grad`` flag and mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from vaescope.core.randomness import GLOBAL_RNG_LOCK


def _modules(model: Any) -> list[nn.Module]:
    """Every submodule (the model included) of an ``nn.Module``; nothing for plain functions."""
    return list(model.modules()) if isinstance(model, nn.Module) else []


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter, else first buffer, else the CPU."""
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def untouched(model: Any, *, seed: int | None = None) -> Iterator[torch.Generator]:
    """A block in which forwards of ``model`` change nothing of it nor of the global random states.

    ``model``: an ``nn.Module`` (every submodule is switched to eval and back), or anything else
    (a pair of functions: only gradients and random states are guarded). ``seed``: of the yielded
    generator (on the model's device); None draws a fresh seed from the operating system.
    """
    # another thread's seeded initialisation or block cannot interleave with this one
    with GLOBAL_RNG_LOCK, _untouched(model, seed) as generator:
        yield generator


@contextlib.contextmanager
def _untouched(model: Any, seed: int | None) -> Iterator[torch.Generator]:
    modes = [(module, module.training) for module in _modules(model)]
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    generator = torch.Generator(device=model_device(model))
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    try:
        for module, _ in modes:
            module.training = False
        with torch.no_grad():
            yield generator
    finally:
        for module, mode in modes:
            module.training = mode
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        elif torch.cuda.is_initialized():  # CUDA started inside the block: each stream back to its start,
            for gen in torch.cuda.default_generators:  # as the user's first CUDA draw would have found it
                gen.manual_seed(gen.initial_seed())


def _hash_tensor(tensor: torch.Tensor | None) -> str | None:
    """sha256 of a tensor's dtype, shape and bytes (any dtype, any device; None stays None)."""
    if tensor is None:
        return None
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    if data.numel():
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> dict[str, dict[str, Any]]:
    """What a measure must leave as it found: a dict of dicts keyed by qualified name.

    ``parameters``, ``buffers``, ``gradients``: sha256 of each tensor's dtype, shape and values
    (``gradients`` None where ``.grad`` is None); ``requires_grad``: each parameter's flag;
    ``training``: each submodule's mode ("" is the model itself). Two fingerprints are equal
    exactly when nothing of these changed (to the hash's collision odds).
    """
    return {
        "parameters": {name: _hash_tensor(p) for name, p in model.named_parameters()},
        "buffers": {name: _hash_tensor(b) for name, b in model.named_buffers()},
        "gradients": {name: _hash_tensor(p.grad) for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "training": {name: module.training for name, module in model.named_modules()},
    }


def rng_fingerprint() -> dict[str, Any]:
    """sha256 of every global random state :func:`untouched` guards: "torch", "numpy", "python",
    and "cuda" (one per device, or None when CUDA is not initialised)."""
    numpy_state = np.random.get_state()
    numpy_digest = hashlib.sha256(repr((numpy_state[0], *numpy_state[2:])).encode())
    numpy_digest.update(np.asarray(numpy_state[1]).tobytes())
    return {
        "torch": _hash_tensor(torch.get_rng_state()),
        "numpy": numpy_digest.hexdigest(),
        "python": hashlib.sha256(repr(random.getstate()).encode()).hexdigest(),
        "cuda": ([_hash_tensor(s) for s in torch.cuda.get_rng_state_all()]
                 if torch.cuda.is_initialized() else None),
    }
