"""Checkpoints and trained weights, as safetensors + JSON: loading them runs no code.

A run directory holds::

    config.json                 the resolved config
    model.safetensors           final weights; metadata: config and image shape
    checkpoints/latest.json     {"file", "sha256", "epoch", "step"}: the newest complete checkpoint
    checkpoints/epoch-NNNN.safetensors
                                weights, Adam state, RNG states, the statistics trace; metadata:
                                config, epoch, step, metrics rows, optimizer hyper-parameters

``latest.json`` is written only after its checkpoint is complete, and records the checkpoint's
SHA-256: a resumed run starts from a whole, verified file or refuses with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from vaescope.core import config as config_mod
from vaescope.core.config import Config
from vaescope.core.errors import VaescopeError
from vaescope.core.randomness import global_rng_kept
from vaescope.runs.manifest import require_intact
from vaescope.models.networks import build_model
from vaescope.core.storage import atomic_write_bytes, atomic_write_json, read_json



class Optimizer(Protocol):
    """What a checkpoint stores of an optimizer: torch's optimizers and vaescope's FusedAdam."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
KEEP_CHECKPOINTS = 2


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _read_safetensors(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise VaescopeError(f"{path} does not exist; was the run finished?") from err
    except OSError as err:
        raise VaescopeError(f"cannot read {path}: {err.strerror or err}; check the file") from err
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise VaescopeError(
            f"{path} does not match the SHA-256 recorded for it; the file was changed or corrupted, "
            "delete the checkpoints folder to start over"
        )
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise VaescopeError(f"{path} is not a valid safetensors file ({err}); it is damaged") from err
    return tensors, metadata


# ---------------------------------------------------------------------------- final weights

def save_weights(path: Path, model: nn.Module, config: Config, image_shape: tuple[int, ...],
                 decoder_variance: float | None = None) -> None:
    """Weights plus the config and image shape that rebuild the model; ``decoder_variance``: a
    Gaussian decoder's variance at the end of training (``loss.objective`` sets it)."""
    # One metadata key: safetensors stores metadata as a hash map whose order varies between
    # processes, and byte-identical files for identical runs are worth keeping.
    meta: dict[str, Any] = {"config": config.to_dict(), "image_shape": list(image_shape)}
    if decoder_variance is not None:
        meta["decoder_variance"] = float(decoder_variance)
    metadata = {"vaescope": json.dumps(meta)}
    atomic_write_bytes(path, st_save(_contiguous_cpu(model.state_dict()), metadata=metadata))


@dataclass
class Run:
    """A trained run: the model (in eval mode, on CPU), its config and where it lives;
    ``decoder_variance``: a Gaussian decoder's variance after training (``loss.variance`` for a
    fixed one; None for a Bernoulli decoder)."""

    directory: Path
    config: Config
    model: nn.Module
    image_shape: tuple[int, ...]
    decoder_variance: float | None = None


def load_run(directory: str | Path, map_location: str | torch.device = "cpu", model: nn.Module | None = None) -> Run:
    """Load the trained model of a run directory written by ``vaescope train``.

    The model is rebuilt from the stored config (a run trained with ``model.factory`` imports
    that factory again); ``model``: an instance to load the weights into instead (required for
    a run trained with a model object passed to ``train``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VaescopeError(f"run directory {directory} does not exist; train one with 'vaescope train --out {directory}'")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise VaescopeError(
            f"{directory} has no {WEIGHTS_FILE}; the run is unfinished, continue it with "
            f"'vaescope train --out {directory} --resume'"
        )
    require_intact(directory)  # a file that changed since the run finished is named, with the fix
    tensors, metadata = _read_safetensors(weights)
    try:
        meta = json.loads(metadata["vaescope"])
        config = config_mod.from_dict(meta["config"], origin=str(weights))
        image_shape = tuple(int(n) for n in meta["image_shape"])
        decoder_variance = (float(meta["decoder_variance"]) if "decoder_variance" in meta
                            else config.loss.variance if config.loss.reconstruction == "gaussian" else None)
    except (KeyError, TypeError, ValueError) as err:
        raise VaescopeError(f"{weights} lacks vaescope's metadata; it was not written by vaescope train") from err
    if model is None:
        with global_rng_kept():  # the initialisation is overwritten: the caller's random state stays
            model = build_model(config.model, image_shape)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise VaescopeError(f"{weights} does not fit the model its config describes: {str(err).splitlines()[0]}") from err
    model.to(map_location).eval()
    return Run(directory, config, model, image_shape, decoder_variance)


# ---------------------------------------------------------------------------- checkpoints

def _optimizer_to_flat(optimizer: Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: Optimizer,
    generators: dict[str, torch.Generator],
    extra_tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> Path:
    """Write ``checkpoints/epoch-NNNN.safetensors`` then point ``latest.json`` at it."""
    folder = run_dir / CHECKPOINT_DIR
    epoch = int(meta["epoch"])
    path = folder / f"epoch-{epoch:04d}.safetensors"
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _optimizer_to_flat(optimizer)
    tensors.update(optim_tensors)
    tensors.update({f"rng.{k}": g.get_state() for k, g in generators.items()})
    tensors.update({f"extra.{k}": v for k, v in extra_tensors.items()})
    metadata = {"vaescope": json.dumps({**meta, "optimizer": optim_meta})}
    payload = st_save(_contiguous_cpu(tensors), metadata=metadata)
    atomic_write_bytes(path, payload)
    atomic_write_json(folder / LATEST_FILE, {
        "file": path.name, "sha256": hashlib.sha256(payload).hexdigest(),
        "epoch": epoch, "step": int(meta["step"]),
    })
    for old in sorted(folder.glob("epoch-*.safetensors"))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    generator_states: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor]
    meta: dict[str, Any]


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT_DIR / LATEST_FILE).is_file()


def _read_pointer(run_dir: Path) -> dict[str, Any]:
    where = run_dir / CHECKPOINT_DIR / LATEST_FILE
    pointer = read_json(where, "checkpoint pointer")
    try:
        name, digest, epoch = str(pointer["file"]), str(pointer["sha256"]), int(pointer["epoch"])
    except (KeyError, TypeError, ValueError) as err:
        raise VaescopeError(f"{where} is malformed; delete the checkpoints folder to start over") from err
    # The pointer must name a checkpoint file inside the checkpoints folder: no "..", no "/".
    if Path(name).name != name or not (name.startswith("epoch-") and name.endswith(".safetensors")):
        raise VaescopeError(f"{where} points to {name!r}, not a checkpoint of this folder; refusing it")
    return {"file": name, "sha256": digest, "epoch": epoch}


def load_checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of the newest complete checkpoint (from ``latest.json``)."""
    return _read_pointer(run_dir)["epoch"]


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The newest complete checkpoint of ``run_dir``, its hash verified."""
    pointer = _read_pointer(run_dir)
    path = run_dir / CHECKPOINT_DIR / pointer["file"]
    tensors, metadata = _read_safetensors(path, expected_sha256=pointer["sha256"])
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "rng": {}, "extra": {}}
    try:  # the hash matched, so only a file crafted together with its pointer gets here
        meta = json.loads(metadata["vaescope"])
        for key, value in tensors.items():
            head, rest = key.split(".", 1)
            groups[head][rest] = value
        optim = _optimizer_from_flat({f"optim.{k}": v for k, v in groups["optim"].items()}, meta.pop("optimizer"))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise VaescopeError(f"{path} lacks vaescope's checkpoint layout ({err!r}); delete the checkpoints folder") from err
    return Checkpoint(groups["model"], optim, groups["rng"], groups["extra"], meta)
