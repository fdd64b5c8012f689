"""``vaescope prune``: a smaller model without its inactive latent variables.

A. Asperti, "Sparsity in Variational Autoencoders": an inactive variable has mu_j ~ 0 for every
input and the decoder ignores it, so its connections can be removed. Here that means two layers:

- the encoder's last layer, whose ``(B, 2D)`` output is split into mu (rows ``0..D-1`` of its
  weight) and log sigma^2 (rows ``D..2D-1``): rows ``j`` and ``D + j`` of a removed variable go;
- the decoder's first layer, which takes z ``(B, D)``: column ``j`` of its weight goes.

The pruned decoder on the kept means computes exactly what the original decoder computes on the
means with the removed ones set to 0 (their columns multiply 0): only float rounding may differ,
and :func:`prune_run` measures it on the test images.

Which layers: vaescope's own dense and conv models, and any model that names its two layers with
a method ``latent_layers() -> (encoder_head, decoder_input)``, both ``nn.Linear``, the head laid out
``[mu | logvar]`` (see :class:`Prunable`). Any other model is refused with one line saying why.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from vaescope.core import config as config_mod
from vaescope.core.config import StatsConfig
from vaescope.core.device import cpu_settings
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_bytes, atomic_write_json, atomic_write_text, directory_lock
from vaescope.data.batches import as_float, images_to_device
from vaescope.data.dataset import Dataset
from vaescope.data.sources import load_dataset
from vaescope.measures.run import run_statistics
from vaescope.measures.statistics import LatentStatistics
from vaescope.models.networks import CUSTOM_KIND, ConvVAE, DenseVAE
from vaescope.runs.checkpoint import (
    WEIGHTS_FILE,
    Run,
    has_checkpoint,
    load_checkpoint,
    load_run,
    save_checkpoint,
    save_weights,
)
from vaescope.runs.files import CONFIG_FILE, METRICS_FILE, TIMING_FILE, Trace, read_trace
from vaescope.runs.manifest import FINAL_FILES, write_manifest
from vaescope.training.engine import EVAL_SEED_OFFSET, evaluate, make_optimizer

PRUNE_FILE = "prune.json"
CRITERIA = ("mu_variance", "sigma2", "kl")  # Var(mu) < t (the verdict), mean sigma^2 > t, mean KL < t


@runtime_checkable
class Prunable(Protocol):
    """A model of your own that can be pruned: it names its two latent layers."""

    def latent_layers(self) -> tuple[nn.Linear, nn.Linear]:
        """(encoder head: ``nn.Linear`` with 2D outputs, mu then logvar; decoder's first ``nn.Linear``, D inputs)."""
        ...


def inactive_mask(stats: LatentStatistics, criterion: str = "mu_variance") -> np.ndarray:
    """Which variables are inactive ``(D,)`` bool under ``criterion`` (one of :data:`CRITERIA`)."""
    if criterion == "mu_variance":
        return ~stats.active
    if criterion == "sigma2":
        return stats.inactive_by_sigma2
    if criterion == "kl":
        return stats.inactive_by_kl
    raise VaescopeError(f"unknown criterion {criterion!r}; use one of: {', '.join(CRITERIA)}")


def latent_layers(model: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The encoder's ``[mu | logvar]`` layer and the decoder's first layer of ``model``, checked."""
    name = type(model).__name__
    if isinstance(model, (DenseVAE, ConvVAE)):
        head, first = model.encoder[-1], model.decoder[0]
    elif isinstance(model, Prunable):
        layers = model.latent_layers()
        if not isinstance(layers, tuple) or len(layers) != 2:
            raise VaescopeError(f"{name}.latent_layers() must return a pair (encoder head, decoder input layer)")
        head, first = layers
    else:
        raise VaescopeError(
            f"{name} cannot be pruned: vaescope cannot tell which layers produce mu/logvar and take z; give it a "
            "method latent_layers() returning (encoder head nn.Linear with outputs [mu | logvar], decoder's first nn.Linear)"
        )
    if not isinstance(head, nn.Linear) or not isinstance(first, nn.Linear):
        raise VaescopeError(f"{name} cannot be pruned: its latent layers are {type(head).__name__} and "
                            f"{type(first).__name__}; only nn.Linear layers can have rows and columns removed")
    if head.out_features != 2 * first.in_features:
        raise VaescopeError(f"{name} cannot be pruned: its encoder head has {head.out_features} outputs but the "
                            f"decoder takes {first.in_features} variables; the head must output [mu | logvar], 2 x D")
    return head, first


def _sliced_linear(layer: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> nn.Linear:
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    if rows is not None:
        weight = weight.index_select(0, rows)
        bias = bias.index_select(0, rows) if bias is not None else None
    if columns is not None:
        weight = weight.index_select(1, columns)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, module in model.named_modules():
        if module is old:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            return
    raise VaescopeError(f"{type(model).__name__}.latent_layers() returned a layer that is not part of the model")


def _head_rows(keep: torch.Tensor, latent_dim: int) -> torch.Tensor:
    return torch.cat([keep, keep + latent_dim])  # mu rows, then logvar rows


def prune_model(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A copy of ``model`` that keeps only the latent variables ``keep`` (indices, in order).

    Its ``encode`` returns ``(mu[:, keep], logvar[:, keep])`` of the original, and its ``decode(z')``
    equals the original's ``decode`` of z with ``z[:, keep] = z'`` and every other variable 0.
    """
    head, first = latent_layers(model)
    latent_dim = first.in_features
    index = torch.as_tensor(list(keep), dtype=torch.long, device=head.weight.device)
    if len(index) == 0:
        raise VaescopeError(f"{type(model).__name__}: pruning would remove every latent variable; keep at least one")
    if len(set(index.tolist())) != len(index) or index.min() < 0 or index.max() >= latent_dim:
        raise VaescopeError(f"variables to keep {list(keep)} must be distinct indices from 0 to {latent_dim - 1}")
    pruned = copy.deepcopy(model)
    new_head, new_first = latent_layers(pruned)
    _replace_module(pruned, new_head, _sliced_linear(head, rows=_head_rows(index, latent_dim)))
    _replace_module(pruned, new_first, _sliced_linear(first, columns=index.to(first.weight.device)))
    if hasattr(pruned, "latent_dim"):
        pruned.latent_dim = len(index)
    return pruned.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def pruning_differences(original: nn.Module, pruned: nn.Module, keep: Sequence[int], x: np.ndarray,
                        batch_size: int = 1000) -> dict[str, float]:
    """Largest |difference| over images ``x`` ``(N, C, H, W)`` between the pruned model and the
    original with the removed variables' means at 0: decoded pixel means (sigmoid of the logits),
    logits, and the kept mu and logvar."""
    keep_t = torch.as_tensor(list(keep), dtype=torch.long)
    worst = {"decoded_images": 0.0, "decoded_logits": 0.0, "mu": 0.0, "logvar": 0.0}
    for start in range(0, len(x), batch_size):
        batch = as_float(torch.as_tensor(np.ascontiguousarray(x[start : start + batch_size])))
        mu, logvar = original.encode(batch)
        mu_p, logvar_p = pruned.encode(batch)
        z = torch.zeros_like(mu)
        z[:, keep_t] = mu[:, keep_t]
        logits, logits_p = original.decode(z), pruned.decode(mu_p)
        for key, a, b in (("decoded_images", torch.sigmoid(logits), torch.sigmoid(logits_p)),
                          ("decoded_logits", logits, logits_p), ("mu", mu[:, keep_t], mu_p),
                          ("logvar", logvar[:, keep_t], logvar_p)):
            worst[key] = max(worst[key], float((a - b).abs().max()))
    return worst


@dataclass(frozen=True)
class PruneResult:
    """What ``prune.json`` holds; ``run_dir`` is the pruned run directory."""

    run_dir: str
    source_run: str
    criterion: str
    thresholds: dict[str, float]
    latent_dim_before: int
    latent_dim_after: int
    removed: list[int]
    kept: list[int]
    parameters_before: int
    parameters_after: int
    max_abs_difference: dict[str, float]
    test_before: dict[str, float]
    test_after: dict[str, float]
    checkpoint: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prune_optimizer_state(state: dict[str, Any], original: nn.Module, keep: torch.Tensor) -> dict[str, Any]:
    """Adam's moments are per weight entry: keep the entries of the kept rows and columns."""
    head, first = latent_layers(original)
    rows = _head_rows(keep, first.in_features)
    slicers = {id(head.weight): lambda t: t.index_select(0, rows), id(first.weight): lambda t: t.index_select(1, keep)}
    if head.bias is not None:
        slicers[id(head.bias)] = lambda t: t.index_select(0, rows)
    params = list(original.parameters())
    pruned = {"state": {}, "param_groups": state["param_groups"]}
    for pid, entries in state["state"].items():
        slicer = slicers.get(id(params[int(pid)]))
        pruned["state"][pid] = {k: (slicer(v) if slicer is not None and torch.is_tensor(v) and v.dim() > 0 else v)
                                for k, v in entries.items()}
    return pruned


def _write_checkpoint(source: Path, out: Path, run: Run, pruned: nn.Module, keep: torch.Tensor,
                      config: config_mod.Config) -> None:
    """The source's last checkpoint, pruned: ``train --resume`` continues the pruned run from it."""
    ckpt = load_checkpoint(source)
    optimizer = make_optimizer(pruned, config.train.lr)
    optimizer.load_state_dict(_prune_optimizer_state(ckpt.optimizer_state, run.model, keep))
    generators = {}
    for name, state in ckpt.generator_states.items():
        generators[name] = torch.Generator()
        generators[name].set_state(state)
    extra = dict(ckpt.extra)
    for key in ("trace_mu_variance", "trace_sigma2_mean"):
        extra[key] = extra[key].index_select(1, keep)
    meta = {k: v for k, v in ckpt.meta.items() if k != "config"}
    save_checkpoint(out, pruned, optimizer, generators, extra, {**meta, "config": config.to_dict()})


def prune_run(run_dir: str | Path, out: str | Path, criterion: str = "mu_variance",
              thresholds: StatsConfig | None = None, dataset: Dataset | None = None) -> PruneResult:
    """Write ``out``: the run ``run_dir`` without the variables inactive under ``criterion`` on the
    test split (``thresholds`` default to the run's ``stats``), as an ordinary run directory plus
    ``prune.json``. Refuses a model that cannot be pruned, and a run with nothing to remove."""
    source, out = Path(run_dir), Path(out)
    if criterion not in CRITERIA:
        raise VaescopeError(f"unknown criterion {criterion!r}; use one of: {', '.join(CRITERIA)}")
    if out.resolve() == source.resolve():
        raise VaescopeError(f"--out {out} is the run being pruned; choose another folder")
    run = load_run(source)
    if run.config.model.kind == CUSTOM_KIND and not run.config.model.factory:
        raise VaescopeError(f"{source} was trained with a model object passed to train(), which a pruned run "
                            "cannot rebuild; prune the object in Python with vaescope.prune.prune_model")
    latent_layers(run.model)  # refuse an unprunable model before any work
    data = dataset if dataset is not None else load_dataset(run.config.data.source)
    thresholds = thresholds or run.config.stats
    stats = run_statistics(run, "test", thresholds=thresholds, dataset=data, write=False)
    inactive = inactive_mask(stats, criterion)
    removed, kept = np.flatnonzero(inactive).tolist(), np.flatnonzero(~inactive).tolist()
    if not removed:
        raise VaescopeError(f"nothing to prune: all {stats.latent_dim} variables of {source} are active by "
                            f"criterion {criterion}")
    if not kept:
        raise VaescopeError(f"every variable of {source} is inactive by criterion {criterion}; a model needs one")
    config = config_mod.replace(run.config, **{"model.latent_dim": len(kept), "stats": asdict(thresholds)})
    with directory_lock(out), cpu_settings(run.config.train.threads):
        if (out / CONFIG_FILE).is_file() or (out / WEIGHTS_FILE).is_file() or has_checkpoint(out):
            raise VaescopeError(f"{out} already holds a run; choose another --out")
        model = run.model.cpu().eval()
        pruned = prune_model(model, kept)
        keep_t = torch.as_tensor(kept, dtype=torch.long)
        differences = pruning_differences(model, pruned, kept, data.x_test)
        x_test = images_to_device(data.x_test, torch.device("cpu"))
        seed = run.config.train.seed + EVAL_SEED_OFFSET  # the test metric of metrics.csv
        test_before = evaluate(model, x_test, run.config.loss, seed=seed)
        test_after = evaluate(pruned, x_test, run.config.loss, seed=seed)
        atomic_write_text(out / CONFIG_FILE, config.to_json())
        with_checkpoint = has_checkpoint(source)
        if with_checkpoint:
            _write_checkpoint(source, out, run, pruned, keep_t, config)
        for name in (METRICS_FILE, TIMING_FILE):  # the history of the training before the prune
            if (source / name).is_file():
                atomic_write_bytes(out / name, (source / name).read_bytes())
        trace = read_trace(source)
        atomic_write_text(out / "trace.csv", Trace(trace.steps, trace.epochs, [v[kept] for v in trace.mu_variance],
                                                   [v[kept] for v in trace.sigma2_mean]).to_csv())
        save_weights(out / WEIGHTS_FILE, pruned, config, run.image_shape)
        result = PruneResult(
            run_dir=str(out), source_run=str(source), criterion=criterion,
            thresholds={"mu_variance": thresholds.mu_variance_threshold, "sigma2_mean": thresholds.sigma2_threshold,
                        "kl_mean": thresholds.kl_threshold},
            latent_dim_before=stats.latent_dim, latent_dim_after=len(kept), removed=removed, kept=kept,
            parameters_before=parameter_count(model), parameters_after=parameter_count(pruned),
            max_abs_difference=differences, test_before=test_before, test_after=test_after,
            checkpoint=with_checkpoint)
        atomic_write_json(out / PRUNE_FILE, result.to_dict())
        write_manifest(out, (*FINAL_FILES, PRUNE_FILE))  # last: the directory is a finished run
    return result


def describe(result: PruneResult) -> str:
    """The lines ``vaescope prune`` prints."""
    saved = 1 - result.parameters_after / result.parameters_before
    return "\n".join([
        (f"removed {len(result.removed)} of {result.latent_dim_before} variables ({result.criterion}): "
         f"{', '.join(map(str, result.removed))}"),
        f"parameters {result.parameters_before:,} -> {result.parameters_after:,} ({100 * saved:.2f}% fewer)",
        (f"largest |difference| of decoded test images from the original with those variables at 0: "
         f"{result.max_abs_difference['decoded_images']:.3g} (logits {result.max_abs_difference['decoded_logits']:.3g})"),
        (f"test loss {result.test_before['loss']:.4f} -> {result.test_after['loss']:.4f} "
         f"(reconstruction {result.test_before['reconstruction']:.4f} -> {result.test_after['reconstruction']:.4f})"),
        f"wrote {result.run_dir} and {Path(result.run_dir) / PRUNE_FILE}",
    ])
