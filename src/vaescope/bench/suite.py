"""``vaescope bench``: vaescope's engine side by side with the common PyTorch loop and pythae.

All contenders run in one process and are interleaved: each round times every contender once,
in an order rotated from round to round, so that load from the rest of the machine hits all of
them alike; the report gives medians over rounds. The yardstick is the rate of a large float32
matrix product; a contender's GFLOP/s is the FLOPs its architecture performs (counted by
``torch.utils.flop_counter``) over its median time.

Contenders:
- ``vaescope``: :func:`vaescope.training.engine.train_epoch`, the loop behind ``vaescope train``.
- ``reference``: the loop most PyTorch code writes (a ``DataLoader`` over a ``TensorDataset``
  with shuffling, default Adam, ``loss.item()`` every step), same model and same loss.
- ``pythae``: pythae's ``TrainingPipeline`` on the same dense model, when pythae is installed
  (``pip install vaescope[bench]``); its epoch is timed from its own epoch callbacks, so its
  set-up and model saving are not counted against it.
- ``stats``: :func:`vaescope.measures.statistics.latent_statistics` over the training split.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vaescope.bench.contenders import (
    matmul_contender,
    pythae_contender,
    reference_contender,
    stats_contender,
    vaescope_contender,
)
from vaescope.bench.monitor import measure_overhead
from vaescope.bench.multi import multi_model_benchmark
from vaescope.bench.process import whole_process_comparison
from vaescope.bench.stacking import not_measured, stacking_benchmark
from vaescope.core.config import Config, resolve
from vaescope.core.device import cpu_settings, select_device
from vaescope.core.errors import VaescopeError
from vaescope.core.provenance import describe, provenance
from vaescope.data.batches import images_to_device
from vaescope.data.dataset import Dataset
from vaescope.data.sources import load_dataset
from vaescope.training.cost import encoder_flops_per_example, training_flops_per_example

log = logging.getLogger(__name__)

TRAINING_PRESETS = ("dense16", "conv16")
PYTHAE_PRESET = "dense16"  # pythae runs the dense model only (its conv nets differ from ours)
STATS_PRESET = "dense16"


# ---------------------------------------------------------------------------- the benchmark

@dataclass(frozen=True)
class Contender:
    name: str
    run: Callable[[int], float]  # n examples -> seconds


def _rounds(contenders: list[Contender], n: int, repeats: int, warmup_n: int) -> dict[str, float]:
    """Median seconds of each contender over ``repeats`` interleaved rounds, after one warm-up
    round on ``warmup_n`` examples (first-call costs: allocator, kernels, thread pools)."""
    for contender in contenders:
        contender.run(warmup_n)
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(repeats):
        shift = r % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            times[contender.name].append(contender.run(n))
        log.info(f"round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    return {k: statistics.median(v) for k, v in times.items()}


def _measure(data: Dataset, x_host: np.ndarray, configs: dict[str, Config], matmul_size: int, use_pythae: bool,
             repeats: int) -> tuple[dict[str, float], dict[str, nn.Module]]:
    """Build every contender, run the interleaved rounds; medians by contender, and our models."""
    n = len(x_host)
    batch_size = configs[PYTHAE_PRESET].train.batch_size
    device = select_device("auto")
    image_shape = data.image_shape
    x_device = images_to_device(x_host, device)
    x_float = np.asarray(x_host, dtype=np.float32) / (255.0 if x_host.dtype == np.uint8 else 1.0)
    x_float_tensor = torch.from_numpy(x_float)

    contenders = [Contender("matmul", matmul_contender(matmul_size, device))]
    models: dict[str, nn.Module] = {}
    for name, cfg in configs.items():
        run, models[name] = vaescope_contender(cfg, x_device, image_shape)
        contenders.append(Contender(f"{name}/vaescope", run))
        contenders.append(Contender(f"{name}/reference", reference_contender(cfg, x_float_tensor, image_shape, device)))
        if cfg.model.kind == "conv":
            contenders.append(Contender(f"{name}/reference_channels_last",
                                        reference_contender(cfg, x_float_tensor, image_shape, device, channels_last=True)))
    pythae_run = pythae_contender(configs[PYTHAE_PRESET], x_float, image_shape, device) if use_pythae else None
    if pythae_run is None:
        log.info("pythae is not installed: its column is skipped (pip install 'vaescope[bench]' to include it)")
    else:
        contenders.append(Contender(f"{PYTHAE_PRESET}/pythae", pythae_run))
    contenders.append(Contender("stats", stats_contender(models[STATS_PRESET], x_host, device)))
    log.info(f"benchmark on {device.type} ({torch.get_num_threads()} threads): {n} training images, "
        f"batch {batch_size}, {repeats} interleaved rounds")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        log.info(f"warning: the machine is busy (load average {load:.1f} on {cores} cores); the other processes "
            "slow every contender, multi-threaded ones most: rerun on an idle machine for figures to quote")
    return _rounds(contenders, n, repeats, min(n, 10 * batch_size)), models


def run_benchmark(
    dataset: Dataset | str = "mnist",
    repeats: int = 3,
    n_train: int | None = None,
    matmul_size: int = 4096,
    threads: int = 0,
    use_pythae: bool = True,
) -> dict[str, Any]:
    """Time vaescope's epoch, the reference loop, pythae and the statistics pass side by side.

    ``dataset``: a :class:`Dataset` or a source for :func:`load_dataset`; ``n_train`` keeps only
    the first training images (a quick run). ``threads`` as ``train.threads`` (0: all cores), for
    the duration of the call. Returns the JSON contract of ``vaescope bench --json``; times are medians in seconds,
    and entries that were not measured (pythae absent, or for conv16) are None.
    """
    if repeats < 1:
        raise VaescopeError(f"--repeats is {repeats}; it must be at least 1")
    if threads < 0:
        raise VaescopeError(f"--threads is {threads}; use 0 (all cores) or a positive count")
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    x_host = data.x_train if n_train is None else data.x_train[:n_train]
    configs = {name: resolve(name) for name in TRAINING_PRESETS}
    batch_size = configs[PYTHAE_PRESET].train.batch_size
    if n_train is not None and not batch_size <= n_train <= len(data.x_train):
        raise VaescopeError(f"--n-train is {n_train}; use {batch_size} to {len(data.x_train)} (one batch to all)")
    n = len(x_host)
    with cpu_settings(threads):
        medians, models = _measure(data, x_host, configs, matmul_size, use_pythae, repeats)
    image_shape = data.image_shape
    peak = 2 * matmul_size**3 / medians["matmul"] / 1e9
    result: dict[str, Any] = {}
    for name in TRAINING_PRESETS:
        ours = medians[f"{name}/vaescope"]
        reference = medians[f"{name}/reference"]
        channels_last = medians.get(f"{name}/reference_channels_last")
        best_reference = min(reference, channels_last) if channels_last is not None else reference
        pythae = medians.get(f"{name}/pythae")
        gflops = training_flops_per_example(models[name], image_shape) * n / ours / 1e9
        result[name] = {
            "vaescope_epoch_s": ours,
            "reference_epoch_s": reference,
            "reference_channels_last_epoch_s": medians.get(f"{name}/reference_channels_last"),
            "pythae_epoch_s": pythae,
            "speedup_vs_reference": best_reference / ours,  # against the faster memory layout
            "speedup_vs_pythae": None if pythae is None else pythae / ours,
            "gflops": gflops,
            "fraction_of_matmul_peak": gflops / peak,
        }
    stats_gflops = encoder_flops_per_example(models[STATS_PRESET], image_shape) * n / medians["stats"] / 1e9
    result["stats"] = {"seconds": medians["stats"], "gflops": stats_gflops,
                       "fraction_of_matmul_peak": stats_gflops / peak}
    result["matmul_peak_gflops"] = peak
    result["provenance"] = provenance()
    return result


def extra_rows(multi_models: int = 0, monitor: bool = False, whole_process: bool = False,
               dataset: Dataset | None = None, repeats: int = 3, stacking: bool = False) -> dict[str, Any]:
    """The optional rows of ``vaescope bench``: many models at once (``multi_model``), the
    LatentMonitor's cost (``monitor``), whole processes against pythae (``whole_process``), and
    stacked dense16 models on the GPU (``gpu_stacking``: always present, saying why it was not
    measured where it was not: no CUDA device, or not asked for)."""
    rows: dict[str, Any] = {}
    if multi_models:
        rows["multi_model"] = multi_model_benchmark(models=multi_models, rounds=repeats, dataset=dataset,
                                                    contenders=("together_threads", "together_processes", "apart"))
    if monitor:
        rows["monitor"] = measure_overhead(repeats=repeats, dataset=dataset if dataset is not None else "mnist")
    if whole_process:
        rows["whole_process"] = whole_process_comparison(rounds=repeats)
    if not torch.cuda.is_available():
        rows["gpu_stacking"] = not_measured("no CUDA device on this machine: stacked models on a GPU were not "
                                            "measured (the CUDA code path is tested on the CPU only)")
    elif not stacking:
        rows["gpu_stacking"] = not_measured("not asked for (--stacking)")
    else:
        rows["gpu_stacking"] = {"measured": True, **stacking_benchmark("cuda", dataset=dataset, rounds=repeats)}
    return rows


# The performance targets for this project's 2-core machine: (what, where in the result,
# comparison, value). Ratios are side by side in one run; shares are of the matmul yardstick.
TARGETS: tuple[tuple[str, tuple[str, str], str, float], ...] = (
    ("dense16 epoch, speedup vs the plain loop", ("dense16", "speedup_vs_reference"), ">=", 1.5),
    ("dense16 epoch, speedup vs pythae", ("dense16", "speedup_vs_pythae"), ">=", 2.0),
    ("dense16 epoch, share of the matmul rate", ("dense16", "fraction_of_matmul_peak"), ">=", 0.6),
    ("conv16 epoch, speedup vs the faster plain loop", ("conv16", "speedup_vs_reference"), ">=", 1.5),
    ("conv16 epoch, share of the matmul rate", ("conv16", "fraction_of_matmul_peak"), ">=", 0.5),
    ("statistics pass, share of the matmul rate", ("stats", "fraction_of_matmul_peak"), ">=", 0.6),
    ("many models at once, speedup vs one after the other", ("multi_model", "speedup"), ">=", 1.4),
    ("whole process, vaescope's time over pythae's", ("whole_process", "ratio_to_pythae"), "<=", 0.5),
)


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of :data:`TARGETS` against ``result`` (``vaescope bench --json``'s rows): ``measured``
    (None where the row was not run), ``reached``, and ``factor_short``: how many times better the
    measure must get to reach the target (1.0 when reached)."""
    rows = []
    for what, (row, key), comparison, wanted in TARGETS:
        measured = (result.get(row) or {}).get(key)
        entry: dict[str, Any] = {"target": what, "wanted": f"{comparison} {wanted:g}", "measured": measured,
                                 "reached": None, "factor_short": None}
        if measured is not None:
            short = wanted / measured if comparison == ">=" else measured / wanted
            entry.update(reached=short <= 1.0, factor_short=max(1.0, short))
        rows.append(entry)
    return rows


def format_report(result: dict[str, Any]) -> str:
    """The benchmark as a text table."""
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    peak = result["matmul_peak_gflops"]
    where = [f"measured with {describe(result['provenance'])}", ""] if "provenance" in result else []
    lines = [*where, f"float32 matrix product: {peak:.1f} GFLOP/s (the yardstick)", "",
             (f"{'':<16}{'vaescope':>10}{'reference':>11}{'ref c-last':>11}{'pythae':>10}{'vs ref':>8}"
              f"{'vs pythae':>11}{'GFLOP/s':>9}{'of matmul':>11}")]
    for name in TRAINING_PRESETS:
        row = result[name]
        lines.append(f"{name + ' epoch':<16}{seconds(row['vaescope_epoch_s']):>10}{seconds(row['reference_epoch_s']):>11}"
                     f"{seconds(row['reference_channels_last_epoch_s']):>11}"
                     f"{seconds(row['pythae_epoch_s']):>10}{ratio(row['speedup_vs_reference']):>8}"
                     f"{ratio(row['speedup_vs_pythae']):>11}{row['gflops']:>9.1f}{row['fraction_of_matmul_peak']:>11.0%}")
    row = result["stats"]
    lines.append(f"{'stats pass':<16}{seconds(row['seconds']):>10}{'':>11}{'':>11}{'':>10}{'':>8}{'':>11}"
                 f"{row['gflops']:>9.1f}{row['fraction_of_matmul_peak']:>11.0%}")
    for key, value in result.items():
        if key in ("multi_model", "monitor", "whole_process") and isinstance(value, dict):
            lines.append(f"{key}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in value.items() if not isinstance(v, (dict, list))))
    gpu = result.get("gpu_stacking")
    if gpu is not None and not gpu.get("measured"):
        lines.append(f"GPU stacking: not measured ({gpu['reason']})")
    elif gpu is not None:
        lines.append(f"GPU stacking on {gpu['device_name']}: one dense16 model {seconds(gpu['single_epoch_s'])} an epoch; "
                     + ", ".join(f"{r['models']} stacked {r['model_epochs_per_s']:.2f} model-epochs/s "
                                 f"({r['speedup']:.1f}x)" for r in gpu["stacked"])
                     + f"; throughput grows up to {gpu['knee']} models")
    if result.get("targets"):
        lines += ["", "targets (set for whole MNIST epochs on a 2-core CPU):"]
    for target in result.get("targets", []):
        verdict = ("not measured" if target["reached"] is None else "reached" if target["reached"]
                   else f"missed: {target['factor_short']:.2f}x short")
        measured = "-" if target["measured"] is None else f"{target['measured']:.2f}"
        lines.append(f"  {target['target']} {target['wanted']}: {measured}, {verdict}")
    return "\n".join(lines)
