"""``train.compile``: the training step's loss compiled with ``torch.compile``, where it pays back.

What is compiled is one function of a batch ``x`` and the reparameterisation draw ``eps``: the
encoder, z = mu + sigma * eps, the decoder and the loss (:func:`vaescope.models.objectives.loss_terms`,
the same definition eager training calls); its backward goes through AOTAutograd. ``eps`` is
drawn outside the graph from the run's noise generator, exactly as eager training draws it, so a
compiled run sees the same noise and the same batches; only the rounding of the fused kernels
differs (float32, a few ulps a step). The optimizer step, the non-finite check and everything
else stay eager; the model object is not wrapped, so checkpoints are the same either way.

Shapes are static (``dynamic=False``): one graph for the full batches, one for the last partial
batch when the training set does not divide by the batch size.

Compiling costs seconds that a run must earn back: inductor's caches (the FX graph and
AOTAutograd caches, and the C++ it compiled) make a second compilation of the same shapes much
cheaper. vaescope points them at its own cache folder (:func:`cache_folder`, not the temporary
folder) and writes a small JSON marker per shape key there, atomically, once both graphs are
compiled. ``"auto"`` compiles when the run's remaining steps exceed the break-even for
the cache's state (warm: a marker of these shapes on this machine and torch; cold: otherwise).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vaescope.core.config import Config, LossConfig
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_json, read_json
from vaescope.data.batches import as_float
from vaescope.models.objectives import LossTerms, loss_terms

log = logging.getLogger(__name__)

# Break-even, in training steps, of compiling dense16 (batch 128, 2 threads): compile seconds over
# seconds saved a step. `vaescope bench --compile --json` at commit 84cc5d9, 2026-12-07, torch 2.13.0
# CPU, Python 3.11, 2 cores of an AMD EPYC (AVX2), nothing else running, medians of 3 fresh processes:
# cold 28.8 s (empty cache), warm 5.0 s (second process, same cache); a step 4.91 ms eager, 4.46 ms
# compiled (0.447 ms saved): 64,423 steps cold (137 MNIST epochs), 11,135 warm (24 epochs). conv16,
# measured in the same run, is slower compiled (32.6 ms against 28.4 ms a step): it never pays back,
# so "auto" leaves conv models eager ("on" compiles them).
BREAK_EVEN_STEPS: dict[str, dict[str, int]] = {
    "dense": {"cold": 64423, "warm": 11135},
}
# The kinds train.compile can compile: vaescope's own models (a user's model may do anything).
COMPILABLE_KINDS = ("dense", "conv")

MARKER_VERSION = 1


# ---------------------------------------------------------------------------- where and what

def cache_folder() -> Path:
    """vaescope's compile cache: ``$VAESCOPE_CACHE_DIR/compile``, else ``$XDG_CACHE_HOME/vaescope/compile``,
    else ``~/.cache/vaescope/compile``."""
    if os.environ.get("VAESCOPE_CACHE_DIR"):
        return Path(os.environ["VAESCOPE_CACHE_DIR"]) / "compile"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vaescope" / "compile"


def batch_shapes(n: int, batch_size: int) -> tuple[int, ...]:
    """The batch sizes an epoch over ``n`` examples feeds the step: the full batch, and the last
    partial one when ``n`` does not divide by ``batch_size`` (each its own static graph)."""
    full = min(batch_size, n)
    last = n % batch_size if n > batch_size else 0
    return (full, last) if last else (full,)


def shape_key(config: Config, model: nn.Module, image_shape: tuple[int, ...], shapes: tuple[int, ...],
              device: torch.device) -> str:
    """A digest of what decides the compiled code: torch, Python, the CPU, the model's
    parameters and layout, the loss, the batch shapes and the device."""
    described = {
        "torch": torch.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
        "cpu": torch.backends.cpu.get_cpu_capability(), "processor": _processor(),
        "model": type(model).__name__, "parameters": [list(p.shape) for p in model.parameters()],
        "layout": str(getattr(model, "memory_format", torch.contiguous_format)),
        "loss": dataclass_items(config.loss), "images": list(image_shape), "batches": list(shapes),
        "device": device.type,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def dataclass_items(value: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(value).items()}


def _processor() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def inductor_folder() -> Path:
    """Where inductor keeps its caches for vaescope: ``$TORCHINDUCTOR_CACHE_DIR`` where set, else
    ``cache_folder() / "inductor"`` (inductor's own default lies in the temporary folder, which a
    reboot empties: the C++ it compiles is most of a cold compile, and the FX graph and AOTAutograd
    entries alone, as ``torch.compiler.save_cache_artifacts`` keeps them, do not spare it)."""
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or cache_folder() / "inductor").absolute()


def is_warm(key: str, folder: Path | None = None) -> bool:
    """True when ``folder`` holds the marker of ``key``, written with this torch, and inductor's
    cache folder it names is the one in effect and still holds files."""
    folder = folder or cache_folder()
    try:
        meta = read_json(folder / f"{key}.json", "compile marker", 2**16)
        cache = inductor_folder()
        return (isinstance(meta, dict) and meta.get("version") == MARKER_VERSION
                and meta.get("torch") == torch.__version__ and meta.get("inductor_cache") == str(cache)
                and cache.is_dir() and any(cache.iterdir()))
    except (VaescopeError, OSError, ValueError):
        return False


def write_marker(key: str, seconds: float, folder: Path | None = None) -> None:
    """Record that ``key``'s graphs are compiled in inductor's cache folder (atomically). Best
    effort: a marker that cannot be written costs the next run a cold decision, nothing else."""
    folder = folder or cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / f"{key}.json", {
            "version": MARKER_VERSION, "torch": torch.__version__, "inductor_cache": str(inductor_folder()),
            "compile_seconds": round(seconds, 2), "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except (OSError, VaescopeError) as err:
        log.info("could not write the compile marker in %s (%s)", folder, err)


# ---------------------------------------------------------------------------- the decision

def unavailable(config: Config, device: torch.device, custom_model: bool) -> str | None:
    """Why this run cannot be compiled (a phrase), or None. Cheap: imports nothing."""
    if custom_model or config.model.factory or config.model.kind not in COMPILABLE_KINDS:
        return "the model is not one of vaescope's own (model.kind 'dense' or 'conv')"
    if config.loss.objective != "elbo":
        return f"loss.objective {config.loss.objective!r} keeps a state the compiled step does not"
    if sys.platform == "win32":
        return "torch.compile is not supported on Windows here"
    if device.type != "cpu":
        return f"the device is {device.type!r}; vaescope compiles only on the CPU (the one tested)"
    if tuple(int(p) for p in torch.__version__.split(".")[:2] if p.isdigit()) < (2, 6):
        return f"torch {torch.__version__} is older than 2.6, the first with inductor's AOTAutograd cache"
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        return f"no C++ compiler found ({compiler!r} is not on PATH)"
    return None


@dataclass(frozen=True)
class Decision:
    """What ``train.compile`` resolved to for a run: ``compile`` or not, and why (one phrase)."""

    compile: bool
    reason: str
    key: str = ""
    warm: bool = False


def decide(config: Config, device: torch.device, custom_model: bool, key: str, steps_left: int,
           folder: Path | None = None) -> Decision:
    """Resolve ``train.compile`` for a run with ``steps_left`` steps to train: "off" -> eager;
    "on" -> compiled, or a one-line error where it is unavailable; "auto" -> compiled when
    ``steps_left`` exceeds the break-even of the cache's state for ``key``."""
    mode = config.train.compile
    if mode == "off":
        return Decision(False, "train.compile is 'off'")
    why_not = unavailable(config, device, custom_model)
    if why_not is not None:
        if mode == "on":
            raise VaescopeError(f"train.compile is 'on' but {why_not}; set train.compile = 'auto' or 'off'")
        return Decision(False, f"training eagerly: {why_not}")
    warm = is_warm(key, folder)
    if mode == "on":
        return Decision(True, "train.compile is 'on'", key, warm)
    state = "warm" if warm else "cold"
    table = BREAK_EVEN_STEPS.get(config.model.kind)
    if table is None:
        return Decision(False, f"training eagerly: model.kind {config.model.kind!r} trains slower compiled "
                               "(vaescope bench --compile)", key, warm)
    needed = table[state]
    if steps_left > needed:
        return Decision(True, f"compiling: {steps_left} steps left exceed the break-even of {needed} ({state} cache)",
                        key, warm)
    return Decision(False, f"training eagerly: {steps_left} steps left do not exceed the break-even of compiling, "
                           f"{needed} ({state} cache)", key, warm)


# ---------------------------------------------------------------------------- the compiled step

class CompiledLoss:
    """``loss_terms`` of ``model`` compiled for the batch sizes ``shapes``; call as
    ``step(x, generator) -> LossTerms`` where eager code calls ``loss_terms(model, x, loss, generator=...)``."""

    def __init__(self, model: nn.Module, loss: LossConfig, latent_dim: int) -> None:
        self.model, self.loss, self.latent_dim = model, loss, latent_dim

        def terms(x: torch.Tensor, eps: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
            t = loss_terms(model, x, loss, eps=eps)
            return t.total, t.reconstruction, t.regularizer, t.mu, t.logvar, \
                (t.error if t.error is not None else t.total)

        self._compiled: Callable[..., tuple[torch.Tensor, ...]] = torch.compile(terms, dynamic=False)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        eps = None
        if self.loss.sampling:  # the draw loss_terms makes eagerly, from the same generator: (B, D)
            eps = torch.randn((len(x), self.latent_dim), generator=generator, device=x.device, dtype=x.dtype)
        total, reconstruction, regularizer, mu, logvar, error = self._compiled(x, eps)
        gaussian = self.loss.reconstruction == "gaussian"
        return LossTerms(total, reconstruction, regularizer, mu, logvar,
                         error if gaussian else None, self.loss.variance if gaussian else None)

    def warm_up(self, batches: list[torch.Tensor]) -> float:
        """Compile every graph now, forward and backward, on ``batches`` (one of each shape) with
        eps = 0 (no generator is drawn from), leaving no gradient behind; returns the seconds."""
        started = time.perf_counter()
        for batch in batches:
            eps = torch.zeros((len(batch), self.latent_dim), dtype=batch.dtype, device=batch.device) \
                if self.loss.sampling else None
            self._compiled(batch, eps)[0].backward()
        for p in self.model.parameters():
            p.grad = None
        return time.perf_counter() - started


def compiled_step(config: Config, model: nn.Module, decision: Decision, batches: list[torch.Tensor]) -> CompiledLoss | None:
    """The compiled step of a run ``decide`` said to compile, its graphs compiled on ``batches``
    (one per shape) and kept in the cache; None where compiling failed under "auto" (one log
    line; eager training goes on). Under "on" a failure is a one-line error."""
    started = time.perf_counter()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_folder()))
    # dynamo's first compile turns torch.distributions' argument checks off for the whole process
    # (torch/_dynamo/eval_frame.py, TorchPatcher): put the caller's setting back
    validate = torch.distributions.Distribution._validate_args
    try:
        step = CompiledLoss(model, config.loss, config.model.latent_dim)
        step.warm_up(batches)
    except Exception as err:  # inductor's failures (a compiler error, a missing header) have many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if config.train.compile == "on":
            raise VaescopeError(f"train.compile is 'on' but compiling failed ({first}); "
                                "set train.compile = 'auto' or 'off'") from err
        log.info("training eagerly: compiling failed (%s)", first)
        for p in model.parameters():
            p.grad = None
        return None
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    seconds = time.perf_counter() - started
    log.info("compiled the training step for batches of %s in %.1f s (%s cache)",
             " and ".join(str(len(b)) for b in batches), seconds, "warm" if decision.warm else "cold")
    if not decision.warm:
        write_marker(decision.key, seconds)
    return step


def for_run(config: Config, model: nn.Module, x_train: torch.Tensor, image_shape: tuple[int, ...],
            device: torch.device, custom_model: bool, steps_left: int) -> CompiledLoss | None:
    """``train.compile`` for one run of :func:`vaescope.training.train.train` with ``steps_left``
    steps to go over ``x_train`` (as stored on the device): the compiled step, or None to train
    eagerly. "auto" says what it chose in one log line; "off" imports and logs nothing."""
    if config.train.compile == "off" or steps_left <= 0:
        return None
    shapes = batch_shapes(len(x_train), config.train.batch_size)
    key = shape_key(config, model, image_shape, shapes, device)
    decision = decide(config, device, custom_model, key, steps_left)
    log.info("%s", decision.reason)
    if not decision.compile:
        return None
    layout = getattr(model, "memory_format", torch.contiguous_format)
    batches = [as_float(x_train[:size]).to(memory_format=layout) for size in shapes]
    return compiled_step(config, model, decision, batches)
