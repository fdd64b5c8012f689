"""``objective.csv``: a Gaussian decoder's variance at every training step, beside the batch's
mean squared error (``loss.objective``; :class:`vaescope.models.objectives.DecoderVariance`).

For "balanced" the variance column is gamma^2, the running mean squared error of Asperti &
Trentin (2020); for "optimal-variance" it is the batch's own MSE; for "learned-variance" the
learned scalar; for "elbo" the fixed ``loss.variance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_text, read_text

OBJECTIVE_FILE = "objective.csv"
COLUMNS = ("step", "epoch", "variance", "batch_mse")


@dataclass(frozen=True)
class VarianceRecord:
    """Per step ``(T,)``: the step (1-based), its epoch fraction, the variance it was scored
    with and the batch's mean squared error per pixel."""

    steps: np.ndarray
    epochs: np.ndarray
    variance: np.ndarray
    batch_mse: np.ndarray


def record_text(history: torch.Tensor, steps_per_epoch: int) -> str:
    """The CSV of a history ``(T, 2)`` (variance, batch MSE per step, from step 1)."""
    values = history.double().cpu().numpy()
    lines = [",".join(COLUMNS)]
    for t, (variance, mse) in enumerate(values, start=1):
        lines.append(f"{t},{t / steps_per_epoch!r},{float(variance)!r},{float(mse)!r}")
    return "\n".join(lines) + "\n"


def write_record(directory: Path, history: torch.Tensor, steps_per_epoch: int) -> None:
    atomic_write_text(directory / OBJECTIVE_FILE, record_text(history, steps_per_epoch))


def read_record(directory: str | Path) -> VarianceRecord:
    """The ``objective.csv`` of a run trained with a Gaussian decoder."""
    path = Path(directory) / OBJECTIVE_FILE
    text = read_text(path, "objective record", 2**28, missing="the run has no Gaussian decoder, or is unfinished")
    rows = text.strip().splitlines()
    if not rows or rows[0] != ",".join(COLUMNS):
        raise VaescopeError(f"{path} does not start with the header {','.join(COLUMNS)}; retrain the run")
    try:
        table = np.array([[float(v) for v in row.split(",")] for row in rows[1:]], dtype=np.float64).reshape(-1, 4)
    except ValueError as err:
        raise VaescopeError(f"{path} is malformed ({err}); retrain the run") from err
    return VarianceRecord(table[:, 0].astype(int), table[:, 1], table[:, 2], table[:, 3])
