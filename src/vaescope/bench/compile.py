"""``vaescope bench --compile``: what ``train.compile`` costs and saves, and when it pays back.

For each preset, in fresh ``python`` processes (inductor keeps in-process caches, so only a new
process shows what a new command pays), with vaescope's and inductor's caches in a temporary
folder:

- cold compile: the first process, on an empty cache, compiles the training step
  (:func:`vaescope.training.compile.compiled_step`: forward and backward, the full batch and the
  last partial one);
- warm compile: a second process, same cache folder, compiles the same shapes again;
- per step: eager against compiled training steps (:func:`vaescope.training.engine.train_epoch`
  over the first ``steps`` batches), interleaved in rounds, medians; and how far apart the two
  losses of the same first batch are (same weights, same noise): float32 rounding.

The break-even is compile seconds over seconds saved a step, in steps and in epochs of the
preset's training set. :data:`vaescope.training.compile.BREAK_EVEN_STEPS` cites a run of this.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vaescope.core.errors import VaescopeError
from vaescope.core.provenance import provenance

log = logging.getLogger(__name__)

COMPILE_PRESETS = ("dense16", "conv16")
CHILD = "from vaescope.bench.compile import child; child()"


@dataclass(frozen=True)
class CompileRow:
    """One preset's figures (seconds, milliseconds; None where a step saves nothing)."""

    preset: str
    cold_compile_s: float
    warm_compile_s: float
    eager_step_ms: float
    compiled_step_ms: float
    saved_step_ms: float
    speedup: float
    steps_per_epoch: int
    break_even_steps_cold: int | None
    break_even_steps_warm: int | None
    break_even_epochs_cold: float | None
    break_even_epochs_warm: float | None
    first_loss_relative_difference: float
    cold_all_s: list[float]
    warm_all_s: list[float]


def _run_child(args: list[str], cache: Path, threads: int, timeout: float = 900) -> dict[str, Any]:
    """One fresh process of :func:`child`; its last stdout line is JSON."""
    env = {**os.environ, "VAESCOPE_CACHE_DIR": str(cache / "vaescope"),
           "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    done = subprocess.run([sys.executable, "-c", CHILD, *args, str(threads)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise VaescopeError(f"bench --compile: the child process failed ({tail})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def break_even(compile_s: float, saved_s: float) -> int | None:
    """Steps after which compiling ``compile_s`` seconds has paid back, saving ``saved_s`` a step."""
    return math.ceil(compile_s / saved_s) if saved_s > 0 else None


def measure_preset(preset: str, dataset: str, repeats: int, threads: int, steps: int) -> CompileRow:
    """Cold and warm compiles (``repeats`` pairs, each pair in its own empty cache folder), then
    eager against compiled steps in one more process on the warm cache."""
    cold, warm = [], []
    with tempfile.TemporaryDirectory(prefix="vaescope-compile-") as tmp:
        for r in range(repeats):
            cache = Path(tmp) / f"cache{r}"
            cold.append(_run_child(["compile", preset, dataset], cache, threads)["compile_s"])
            warm.append(_run_child(["compile", preset, dataset], cache, threads)["compile_s"])
            log.info("%s round %d/%d: cold compile %.1f s, warm %.1f s", preset, r + 1, repeats, cold[-1], warm[-1])
        timed = _run_child(["steps", preset, dataset, str(repeats), str(steps)], Path(tmp) / "cache0", threads)
    eager_ms, compiled_ms = timed["eager_ms"], timed["compiled_ms"]
    saved_s = (eager_ms - compiled_ms) / 1e3
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    per_epoch = timed["steps_per_epoch"]
    steps_cold, steps_warm = break_even(cold_s, saved_s), break_even(warm_s, saved_s)
    return CompileRow(preset, cold_s, warm_s, eager_ms, compiled_ms, eager_ms - compiled_ms, eager_ms / compiled_ms,
                      per_epoch, steps_cold, steps_warm,
                      None if steps_cold is None else steps_cold / per_epoch,
                      None if steps_warm is None else steps_warm / per_epoch,
                      timed["first_loss_relative_difference"], cold, warm)


def compile_benchmark(presets: tuple[str, ...] = COMPILE_PRESETS, dataset: str = "mnist", repeats: int = 3,
                      threads: int = 2, steps: int = 60) -> dict[str, Any]:
    """``vaescope bench --compile --json``: one row per preset (:class:`CompileRow` as a dict)
    and the provenance. ``threads``: torch threads of every child (0: all cores)."""
    if repeats < 1:
        raise VaescopeError(f"--repeats is {repeats}; it must be at least 1")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        log.info(f"warning: the machine is busy (load average {load:.1f} on {cores} cores): rerun on an idle "
                 "machine for figures to quote")
    rows = {preset: asdict(measure_preset(preset, dataset, repeats, threads, steps)) for preset in presets}
    return {"compile": rows, "provenance": provenance()}


def format_compile(result: dict[str, Any]) -> str:
    """The rows of :func:`compile_benchmark` as text."""
    def maybe(value: float | None, unit: str) -> str:
        return "never" if value is None else f"{value:.0f}{unit}" if unit == " steps" else f"{value:.1f}{unit}"

    lines = [f"{'':<10}{'cold':>9}{'warm':>9}{'eager':>10}{'compiled':>10}{'speedup':>9}"
             f"{'break-even cold':>22}{'break-even warm':>22}"]
    for preset, row in result["compile"].items():
        lines.append(f"{preset:<10}{row['cold_compile_s']:>8.1f}s{row['warm_compile_s']:>8.1f}s"
                     f"{row['eager_step_ms']:>8.2f}ms{row['compiled_step_ms']:>8.2f}ms{row['speedup']:>8.2f}x"
                     f"{maybe(row['break_even_epochs_cold'], ' epochs'):>22}{maybe(row['break_even_epochs_warm'], ' epochs'):>22}")
    lines.append("compile: one fresh process, forward and backward, both batch shapes; step: a training step "
                 "(batch, loss, backward, Adam), medians")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the child process

def child() -> None:
    """``python -c CHILD compile|steps PRESET DATASET [ROUNDS STEPS] THREADS``: prints one JSON line."""
    what, preset, dataset, *rest = sys.argv[1:]
    threads = int(rest[-1])
    import torch

    from vaescope.core.config import resolve
    from vaescope.core.device import configure_cpu
    from vaescope.data.batches import as_float, images_to_device
    from vaescope.data.dataset import split_images
    from vaescope.data.sources import load_dataset
    from vaescope.training import compile as compiling
    from vaescope.training.engine import prepare_training, train_epoch

    configure_cpu(threads)
    config = resolve(preset, overrides=["train.compile=on"])
    data = load_dataset(dataset)
    device = torch.device("cpu")
    x = images_to_device(split_images(data, "train", config.data.binarize), device)
    batch = config.train.batch_size

    def compiled_for(model: torch.nn.Module) -> Any:
        shapes = compiling.batch_shapes(len(x), batch)
        key = compiling.shape_key(config, model, data.image_shape, shapes, device)
        decision = compiling.decide(config, device, False, key, 1)
        layout = getattr(model, "memory_format", torch.contiguous_format)
        started = time.perf_counter()
        step = compiling.compiled_step(config, model, decision, [as_float(x[:s]).to(memory_format=layout) for s in shapes])
        return step, time.perf_counter() - started

    if what == "compile":
        _, seconds = compiled_for(prepare_training(config, data.image_shape, device).model)
        print(json.dumps({"compile_s": seconds}))
        return
    rounds, steps = int(rest[0]), int(rest[1])
    eager, compiled = (prepare_training(config, data.image_shape, device) for _ in range(2))
    step, _ = compiled_for(compiled.model)
    first = x[: batch]
    with torch.no_grad():  # the same first batch, weights and noise: the losses differ by rounding only
        noise = [torch.Generator().manual_seed(1) for _ in range(2)]
        from vaescope.models.objectives import loss_terms
        layout = getattr(eager.model, "memory_format", torch.contiguous_format)
        images = as_float(first).to(memory_format=layout)
        a = float(loss_terms(eager.model, images, config.loss, generator=noise[0]).total)
        b = float(step(images, noise[1]).total)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    subset = x[: batch * steps]
    for r in range(rounds + 1):  # round 0 warms up
        for name, setup, fn in (("eager", eager, None), ("compiled", compiled, step))[:: 1 if r % 2 else -1]:
            started = time.perf_counter()
            train_epoch(setup.model, setup.optimizer, subset, config.loss, batch, setup.shuffle, setup.noise,
                        compiled=fn)
            if r:
                times[name].append((time.perf_counter() - started) / steps * 1e3)
    print(json.dumps({"eager_ms": statistics.median(times["eager"]), "compiled_ms": statistics.median(times["compiled"]),
                      "first_loss_relative_difference": abs(a - b) / abs(a),
                      "steps_per_epoch": math.ceil(len(x) / batch), "eager_all": times["eager"],
                      "compiled_all": times["compiled"]}))
