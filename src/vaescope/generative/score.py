"""``vaescope score``: how close a run's samples are to the data, with no download.

The features are the penultimate layer of a small LeNet trained by vaescope itself on the run's
dataset (MNIST, or Fashion-MNIST), once, deterministically, and cached in the user's cache folder
(``$VAESCOPE_CLASSIFIERS``, else ``<vaescope's data cache>/classifiers``) as ``lenet-<data>.safetensors`` with a
``.json`` beside it holding its SHA-256, test accuracy, settings, training time and provenance.
A cached file whose SHA-256 does not match is refused (delete it to train again). On MNIST the
classifier must reach 99% test accuracy.

The score of a sampler: the Frechet distance between the features of ``n`` generated images and
of ``n`` test images, and precision / recall / density / coverage (:mod:`vaescope.measures.frechet`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vaescope.core.errors import VaescopeError
from vaescope.core.provenance import provenance
from vaescope.core.storage import atomic_write_bytes, atomic_write_json, directory_lock, read_bytes, read_json
from vaescope.data.dataset import Dataset, cache_dir, split_images
from vaescope.data.sources import load_dataset
from vaescope.generative.samplers import SamplerSettings, generate
from vaescope.measures.frechet import PRDC, frechet_distance_of, precision_recall_density_coverage
from vaescope.models.classifier import LeNet
from vaescope.models.isolation import untouched
from vaescope.runs.checkpoint import Run, load_run
from vaescope.training.classifier import ClassifierSettings, train_classifier

log = logging.getLogger(__name__)
CLASSIFIER_ENV = "VAESCOPE_CLASSIFIERS"
MIN_ACCURACY = {"mnist": 0.99}  # Fashion-MNIST: none (a LeNet reaches ~0.9 there)
MAX_CLASSIFIER_BYTES = 2**26


def classifier_dir() -> Path:
    """``$VAESCOPE_CLASSIFIERS``, else ``<cache_dir()>/classifiers``."""
    if os.environ.get(CLASSIFIER_ENV):
        return Path(os.environ[CLASSIFIER_ENV]).expanduser()
    return cache_dir() / "classifiers"


@dataclass(frozen=True)
class Classifier:
    """The score's feature extractor: the LeNet (eval mode), the data it was trained on, and its record."""

    model: LeNet
    data: str
    record: dict[str, Any]

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor, batch_size: int = 2000) -> np.ndarray:
        """``(N, 1, 28, 28)`` images (uint8: value / 255, or floats in [0, 1]) -> ``(N, 128)`` float32."""
        parts = []
        with untouched(self.model):
            for start in range(0, len(images), batch_size):
                x = torch.as_tensor(np.asarray(images[start : start + batch_size]))
                x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
                parts.append(self.model.features(x).numpy())
        return np.concatenate(parts)


def _data_name(source: str) -> str:
    if source not in ("mnist", "fashion-mnist"):
        raise VaescopeError(f"the score's classifier is trained on mnist or fashion-mnist; this run's data is "
                            f"{source!r}: score a run of one of those")
    return source


def load_classifier(source: str = "mnist", dataset: Dataset | None = None,
                    settings: ClassifierSettings = ClassifierSettings()) -> Classifier:
    """The cached classifier of ``source``; trained (once, minutes on two cores) and cached if absent."""
    name = _data_name(source)
    folder = classifier_dir()
    weights, record_path = folder / f"lenet-{name}.safetensors", folder / f"lenet-{name}.json"
    with directory_lock(folder, "classifier cache", wait=True, hint="another vaescope is training it; wait"):
        if not weights.is_file():
            data = dataset if dataset is not None else load_dataset(name)
            log.info("training the score's classifier on %s (once; cached in %s)", name, folder)
            trained = train_classifier(data.x_train, data.y_train, data.x_test, data.y_test, settings)
            floor = MIN_ACCURACY.get(name)
            if floor is not None and trained.test_accuracy < floor:
                raise VaescopeError(f"the score's classifier reached {trained.test_accuracy:.4f} test accuracy on "
                                    f"{name}, below {floor}; not cached: train it with more epochs")
            payload = st_save({k: v.contiguous() for k, v in trained.model.state_dict().items()})
            atomic_write_bytes(weights, payload)
            atomic_write_json(record_path, {
                "file": weights.name, "sha256": hashlib.sha256(payload).hexdigest(), "data": name,
                "test_accuracy": trained.test_accuracy, "seconds": trained.seconds,
                "settings": asdict(trained.settings), "threads": torch.get_num_threads(), "provenance": provenance()})
    record = read_json(record_path, "classifier record")
    raw = bytes(read_bytes(weights, "classifier weights", MAX_CLASSIFIER_BYTES))
    if hashlib.sha256(raw).hexdigest() != record.get("sha256"):
        raise VaescopeError(f"{weights} does not match the SHA-256 in {record_path.name}; delete both to train it again")
    model = LeNet()
    model.load_state_dict(st_load(raw))
    return Classifier(model.eval(), name, record)


@dataclass(frozen=True)
class Score:
    """A sampler's score: ``n`` generated against ``n`` test images."""

    sampler: str
    n: int
    seed: int
    frechet_distance: float
    prdc: PRDC
    classifier_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "n": self.n, "seed": self.seed, "frechet_distance": self.frechet_distance,
                **self.prdc.to_dict(), "classifier_sha256": self.classifier_sha256}


def score_images(classifier: Classifier, real: np.ndarray, generated: np.ndarray | torch.Tensor,
                 nearest_k: int = 5) -> tuple[float, PRDC]:
    """The Frechet distance and PRDC of ``generated`` images against ``real`` ones, on the classifier's features."""
    a, b = classifier.features(real), classifier.features(generated)
    return frechet_distance_of(a, b), precision_recall_density_coverage(a, b, nearest_k)


def score_run(run: Run | str | Path, sampler: str = "prior", n: int = 10_000, seed: int = 0,
              settings: SamplerSettings = SamplerSettings(), dataset: Dataset | None = None,
              classifier: Classifier | None = None) -> Score:
    """Score ``n`` samples of ``run``'s ``sampler`` against its first ``n`` test images."""
    run = run if isinstance(run, Run) else load_run(run)
    data = dataset if dataset is not None else load_dataset(run.config.data.source, run.config.data.max_bytes)
    classifier = classifier or load_classifier(run.config.data.source, data)
    real = split_images(data, "test", run.config.data.binarize)[:n]
    if len(real) < n:
        raise VaescopeError(f"--n is {n}, but the test split holds {len(real)} images; give --n {len(real)} or fewer")
    images, _ = generate(run, sampler, n, seed, settings, data)
    distance, prdc = score_images(classifier, real, images)
    return Score(sampler, n, seed, distance, prdc, str(classifier.record["sha256"]))


def write_score(run_dir: Path, score: Score) -> Path:
    """``RUN/score-<sampler>.json``: the score with its provenance."""
    path = Path(run_dir) / f"score-{score.sampler}.json"
    atomic_write_json(path, {**score.to_dict(), "provenance": provenance()})
    return path


def describe(score: Score) -> str:
    return (f"{score.sampler}: Frechet distance {score.frechet_distance:.3f}, precision {score.prdc.precision:.3f}, "
            f"recall {score.prdc.recall:.3f}, density {score.prdc.density:.3f}, coverage {score.prdc.coverage:.3f} "
            f"({score.n} samples against {score.n} test images; classifier {score.classifier_sha256[:12]})")


__all__ = ["Classifier", "Score", "classifier_dir", "describe", "load_classifier", "score_images", "score_run",
           "write_score"]
