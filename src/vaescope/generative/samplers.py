"""``vaescope generate``: samples of a trained run from the prior, a Gaussian mixture or a second
stage, fitted once on the run's training codes and kept in ``RUN/samplers/``.

A fitted sampler is a safetensors file whose metadata records what it was fitted with (the
active variables, the settings, the time it took); a later call with the same settings loads it.
Files are written atomically; nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vaescope.core.errors import VaescopeError
from vaescope.core.provenance import provenance
from vaescope.core.storage import atomic_write_bytes, atomic_write_json, read_bytes
from vaescope.data.dataset import Dataset, split_images
from vaescope.data.sources import load_dataset
from vaescope.measures.sampling import (
    GaussianMixtureFit,
    fit_gaussian_mixture,
    full_codes,
    images_of_codes,
    posterior_means,
    sample_gaussian_mixture,
)
from vaescope.measures.statistics import latent_statistics
from vaescope.models.isolation import untouched
from vaescope.models.two_stage import SecondStageVAE
from vaescope.reports.figures.grid import save_grid
from vaescope.runs.checkpoint import Run, load_run
from vaescope.training.two_stage import SecondStageSettings, second_stage_codes, train_second_stage

log = logging.getLogger(__name__)
SAMPLERS = ("prior", "gmm", "two-stage")
SAMPLER_DIR = "samplers"
MAX_SAMPLER_BYTES = 2**28


@dataclass(frozen=True)
class SamplerSettings:
    """How the ex-post samplers are fitted: on at most ``codes`` training codes (the first ones;
    10,000 keeps a 100-component fit in seconds on two cores), the mixture's components, its
    iterations and seed; the second stage's settings."""

    components: int = 100
    codes: int = 10_000
    gmm_max_iter: int = 100
    seed: int = 0
    second_stage: SecondStageSettings = SecondStageSettings()

    def key(self, sampler: str) -> dict[str, Any]:
        if sampler == "gmm":
            return {"components": self.components, "codes": self.codes, "max_iter": self.gmm_max_iter,
                    "seed": self.seed}
        if sampler == "two-stage":
            return {**asdict(self.second_stage), "hidden": list(self.second_stage.hidden), "codes": self.codes}
        return {}


@dataclass
class FittedSampler:
    """A sampler of ``run``'s codes: ``kind`` one of SAMPLERS; ``active`` ``(D,)`` bool; ``gmm`` or
    ``stage`` for the fitted ones; ``info`` what the fit recorded (settings, seconds, ...)."""

    kind: str
    latent_dim: int
    active: np.ndarray
    gmm: GaussianMixtureFit | None = None
    stage: SecondStageVAE | None = None
    info: dict[str, Any] | None = None

    def codes(self, n: int, seed: int) -> torch.Tensor:
        """``(n, D)`` codes to decode."""
        if self.kind == "prior":
            return torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        if self.kind == "gmm":
            assert self.gmm is not None
            return full_codes(self.active, sample_gaussian_mixture(self.gmm, n, seed), self.latent_dim)
        assert self.stage is not None
        with untouched(self.stage, seed=seed) as generator:
            values = second_stage_codes(self.stage, n, generator)
        return full_codes(self.active, values.cpu(), self.latent_dim)


def check_sampler(kind: str) -> str:
    if kind not in SAMPLERS:
        raise VaescopeError(f"--sampler {kind!r} is unknown; use one of: {', '.join(SAMPLERS)}")
    return kind


def training_codes(run: Run, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The run's posterior means over its training images ``(N, D)`` and its verdicts ``(D,)``
    (``stats.mu_variance_threshold`` on Var(mu) over the same images)."""
    images = split_images(data, "train", run.config.data.binarize)
    means = posterior_means(run.model, images)
    active = latent_statistics(run.model, images, thresholds=run.config.stats).active
    return means, np.asarray(active, dtype=bool)


def fitted_sampler(run: Run | str | Path, kind: str, settings: SamplerSettings = SamplerSettings(),
                   dataset: Dataset | None = None) -> FittedSampler:
    """The ``kind`` sampler of a run: loaded from ``RUN/samplers/`` when fitted before with these
    settings, else fitted on the run's training codes and saved there."""
    run = run if isinstance(run, Run) else load_run(run)
    check_sampler(kind)
    dim = int(run.model.latent_dim) if hasattr(run.model, "latent_dim") else run.config.model.latent_dim
    if kind == "prior":
        return FittedSampler("prior", dim, np.ones(dim, dtype=bool), info={})
    seed = settings.seed if kind == "gmm" else settings.second_stage.seed
    path = run.directory / SAMPLER_DIR / f"{kind}-seed{seed}.safetensors"
    key = settings.key(kind)
    if path.is_file():
        loaded = _load(path, kind, dim)
        if loaded.info and loaded.info.get("settings") == key:
            return loaded
    data = dataset if dataset is not None else load_dataset(run.config.data.source, run.config.data.max_bytes)
    started = time.perf_counter()
    means, active = training_codes(run, data)
    codes = means[: settings.codes, active]
    info: dict[str, Any] = {"settings": key, "active": np.flatnonzero(active).tolist(), "training_codes": len(codes)}
    if kind == "gmm":
        log.info("%s: fitting a %d-component Gaussian mixture on %d codes of %d active variables",
                 run.directory.name, settings.components, len(codes), int(active.sum()))
        gmm = fit_gaussian_mixture(codes, settings.components, settings.seed, settings.gmm_max_iter)
        info.update(fitted_codes=len(codes), converged=gmm.converged, iterations=gmm.iterations,
                    components=len(gmm.weights))
        fitted = FittedSampler("gmm", dim, active, gmm=gmm, info=info)
        tensors = {k: torch.from_numpy(v) for k, v in gmm.to_arrays().items()}
    else:
        log.info("%s: training a second stage on %d codes of %d active variables",
                 run.directory.name, len(codes), int(active.sum()))
        stage = train_second_stage(torch.from_numpy(codes), settings.second_stage)
        info.update(gamma2=stage.gamma2, losses=stage.losses, fitted_codes=len(codes))
        fitted = FittedSampler("two-stage", dim, active, stage=stage.model, info=info)
        tensors = {f"stage.{k}": v for k, v in stage.model.state_dict().items()}
    info["seconds"] = time.perf_counter() - started
    tensors["active"] = torch.from_numpy(active.astype(np.uint8))
    meta = {"vaescope": json.dumps({"kind": kind, "info": info})}
    atomic_write_bytes(path, st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))
    return fitted


def _load(path: Path, kind: str, dim: int) -> FittedSampler:
    raw = read_bytes(path, "sampler file", MAX_SAMPLER_BYTES)
    try:
        tensors = st_load(bytes(raw))
        header = json.loads(bytes(raw[8 : 8 + int.from_bytes(raw[:8], "little")]))
        meta = json.loads(header["__metadata__"]["vaescope"])
        info = meta["info"]
        active = tensors["active"].numpy().astype(bool)
        if kind == "gmm":
            gmm = GaussianMixtureFit(tensors["weights"].double().numpy(), tensors["means"].double().numpy(),
                                     tensors["covariances"].double().numpy(), bool(info["converged"]),
                                     int(info["iterations"]))
            return FittedSampler("gmm", dim, active, gmm=gmm, info=info)
        hidden = tuple(info["settings"]["hidden"])
        stage = SecondStageVAE(int(active.sum()), hidden)
        stage.load_state_dict({k[len("stage."):]: v for k, v in tensors.items() if k.startswith("stage.")})
        return FittedSampler("two-stage", dim, active, stage=stage.eval(), info=info)
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise VaescopeError(f"{path} is not a sampler vaescope wrote ({err!r}); delete it to fit again") from err


def generate(run: Run | str | Path, kind: str, n: int, seed: int = 0, settings: SamplerSettings = SamplerSettings(),
             dataset: Dataset | None = None) -> tuple[torch.Tensor, FittedSampler]:
    """``n`` images ``(n, C, H, W)`` in [0, 1] decoded from the ``kind`` sampler's codes (seed ``seed``)."""
    if n < 1:
        raise VaescopeError(f"--n is {n}; ask for at least one sample")
    run = run if isinstance(run, Run) else load_run(run)
    sampler = fitted_sampler(run, kind, settings, dataset)
    return images_of_codes(run.model, sampler.codes(n, seed)), sampler


def write_samples(images: torch.Tensor, out: Path, description: dict[str, Any]) -> list[Path]:
    """``samples.safetensors`` (float32 ``(n, C, H, W)``), ``grid.png`` (the first 100, 10 a row)
    and ``generate.json`` (what made them, with provenance) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "samples.safetensors", st_save({"images": images.float().contiguous()}))
    save_grid(images[:100].numpy(), out / "grid.png")
    atomic_write_json(out / "generate.json", {**description, "n": len(images), "shape": list(images.shape[1:]),
                                              "provenance": provenance()})
    return [out / "samples.safetensors", out / "grid.png", out / "generate.json"]
