"""``vaescope objectives``: the table of objectives x samplers the follow-up papers never printed.

For each architecture (dense16, conv16) and each objective of :data:`~vaescope.generative.plan.OBJECTIVES`
(the ELBO with a Bernoulli or a fixed-variance Gaussian decoder; balanced, Asperti & Trentin 2020; the
optimal and the learned variance of the sigma-VAE, Rybkin et al. 2021), a few seeds. In stages:

1. the score's classifier (:func:`vaescope.generative.score.load_classifier`; trained once and cached);
2. every run trained by :func:`vaescope.training.multi.train_many` into ``OUT/runs/<preset>-seed<S>``: a
   finished run is reused, an interrupted one resumed, so the command can be run again after a kill;
3. the measures of each run (:func:`measure_run`), kept in ``RUN/objectives-measures.json`` with what
   they depend on, reused when that has not changed: the active count and the variance law over the
   test split, the last epoch's test -ELBO, the importance-weighted bound, and for each sampler (prior,
   Gaussian mixture, second stage) the Frechet distance and precision/recall/density/coverage;
4. ``OUT/objectives.json`` (every run, the findings, the time of each stage, provenance) and
   ``OUT/objectives.md`` (:mod:`vaescope.generative.table_report`), written atomically.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from vaescope.core.device import cpu_settings
from vaescope.core.errors import VaescopeError
from vaescope.core.provenance import provenance
from vaescope.core.storage import atomic_write_json, atomic_write_text, directory_lock, read_json
from vaescope.data.dataset import Dataset, split_images
from vaescope.data.sources import load_dataset
from vaescope.generative.plan import OBJECTIVES, TableRun, TableSettings, table_runs
from vaescope.generative.samplers import SAMPLERS, generate
from vaescope.generative.score import Classifier, load_classifier
from vaescope.generative.table_report import findings, finding_sentences, render_report
from vaescope.measures.bound import importance_weighted_bound
from vaescope.measures.frechet import frechet_distance_of, precision_recall_density_coverage
from vaescope.measures.run import measured_images
from vaescope.measures.statistics import latent_statistics
from vaescope.models.likelihoods import Gaussian, Likelihood, run_likelihood
from vaescope.runs.checkpoint import WEIGHTS_FILE, Run, load_run
from vaescope.runs.files import read_metrics, training_seconds
from vaescope.runs.manifest import file_sha256
from vaescope.training.multi import train_many

log = logging.getLogger(__name__)
RESULTS_JSON, REPORT_MD = "objectives.json", "objectives.md"
MEASURES_FILE = "objectives-measures.json"
SAMPLE_SEED = 0  # the draws of every sampler; the runs' own seeds differ


def trained_likelihood(run: Run) -> Likelihood:
    """The decoder's likelihood as the run left it: the Bernoulli on logits, or the Gaussian of the run's
    final variance (a balanced, optimal- or learned-variance run ends far from ``loss.variance``)."""
    if run.config.loss.reconstruction == "gaussian" and run.decoder_variance is not None:
        return Gaussian(run.decoder_variance, link=run.config.loss.link)
    return run_likelihood(run.config.loss)


def negative_elbo(test_loss: float, reconstruction: str, image_shape: tuple[int, ...]) -> float:
    """A test loss of ``metrics.csv`` as the -ELBO in nats per image: a Gaussian decoder's loss leaves
    out the constant (P / 2) log(pi) of its P pixels (:func:`vaescope.models.objectives.gaussian_reconstruction`)."""
    if reconstruction != "gaussian":
        return test_loss
    return test_loss + 0.5 * math.prod(image_shape) * math.log(math.pi)


def _measure_key(table_run: TableRun, settings: TableSettings, classifier: Classifier) -> dict[str, Any]:
    return {**settings.measure_key(), "classifier_sha256": classifier.record["sha256"],
            "weights_sha256": file_sha256(table_run.directory / WEIGHTS_FILE)}


def measure_run(table_run: TableRun, settings: TableSettings, data: Dataset, classifier: Classifier,
                real_features: np.ndarray) -> tuple[dict[str, Any], bool]:
    """The measures of one trained run, and whether they were reused from ``RUN/objectives-measures.json``.

    ``real_features``: the classifier's features ``(samples, d)`` of the first ``settings.samples`` test
    images, the generated ones' reference (computed once for the table; as
    :func:`vaescope.generative.score.score_images` scores)."""
    path = table_run.directory / MEASURES_FILE
    key = _measure_key(table_run, settings, classifier)
    if path.is_file():
        stored = read_json(path, "objectives measures")
        if stored.get("key") == key:
            return stored["measures"], True
    run = load_run(table_run.directory)
    config = run.config
    test = measured_images(data, "test", config.data.binarize)
    started = time.perf_counter()
    stats = latent_statistics(run.model, test, batch_size=2000, thresholds=config.stats)
    statistics_seconds = time.perf_counter() - started
    bound = importance_weighted_bound(run.model, test, (1, settings.bound_k), likelihood=trained_likelihood(run),
                                      binarize=config.data.binarize, limit=settings.bound_images, seed=0)
    last = read_metrics(run.directory)[-1]
    samplers: dict[str, dict[str, Any] | None] = {}
    unfitted: dict[str, str] = {}  # a fitted sampler needs an active variable (over the training codes)
    for kind in SAMPLERS:
        if kind != "prior" and not stats.active.any():
            samplers[kind], unfitted[kind] = None, "no active variable over the test split"
            continue
        try:
            images, fitted = generate(run, kind, settings.samples, SAMPLE_SEED, settings.sampler, data)
        except VaescopeError as err:
            if kind == "prior":
                raise
            samplers[kind], unfitted[kind] = None, str(err)
            log.warning("%s: %s not fitted: %s", run.directory.name, kind, err)
            continue
        started = time.perf_counter()
        generated = classifier.features(images)
        distance = frechet_distance_of(real_features, generated)
        prdc = precision_recall_density_coverage(real_features, generated, settings.nearest_k)
        samplers[kind] = {"frechet_distance": distance, **prdc.to_dict(),
                          "fit_seconds": float((fitted.info or {}).get("seconds", 0.0)),
                          "score_seconds": time.perf_counter() - started}
        log.info("%s %s: Frechet distance %.2f, precision %.3f, recall %.3f", run.directory.name, kind, distance,
                 prdc.precision, prdc.recall)
    measures = {
        "latent_dim": stats.latent_dim, "active": int(stats.active.sum()),
        "mu_variance_threshold": config.stats.mu_variance_threshold, "statistics_images": stats.n,
        "variance_law_max_abs_dev": stats.variance_law_max_abs_dev,
        "likelihood": bound.likelihood, "likelihood_description": bound.likelihood_description,
        "decoder_variance": run.decoder_variance,
        "test_loss": last["test_loss"],
        "test_negative_elbo": negative_elbo(last["test_loss"], config.loss.reconstruction, run.image_shape),
        "bound": {"k": settings.bound_k, "images": bound.n,
                  "negative_log_likelihood": -bound.bound(settings.bound_k),
                  "standard_error": float(bound.standard_errors[bound.ks.index(settings.bound_k)]),
                  "negative_elbo_k1": -bound.bound(1)},
        "samplers": samplers, "unfitted": unfitted,
        "seconds": {"training": training_seconds(run.directory), "statistics": statistics_seconds,
                    "bound": bound.seconds},
    }
    atomic_write_json(path, {"key": key, "measures": measures})
    return measures, False


def _totals(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {"training": sum(r["seconds"]["training"] for r in runs),
            "statistics": sum(r["seconds"]["statistics"] for r in runs),
            "bound": sum(r["seconds"]["bound"] for r in runs),
            "fits": sum(s["fit_seconds"] for r in runs for s in r["samplers"].values() if s),
            "scoring": sum(s["score_seconds"] for r in runs for s in r["samplers"].values() if s)}


def _measure_all(plan: list[TableRun], settings: TableSettings, data: Dataset, classifier: Classifier,
                 out: Path) -> tuple[list[dict[str, Any]], int]:
    """Every run's row of ``objectives.json`` (its place in the table, then :func:`measure_run`), and how
    many runs' measures were reused."""
    runs, reused = [], 0
    real: dict[str, np.ndarray] = {}
    for table_run in plan:
        binarize = table_run.config.data.binarize
        if binarize not in real:
            real[binarize] = classifier.features(split_images(data, "test", binarize)[: settings.samples])
        measures, was_reused = measure_run(table_run, settings, data, classifier, real[binarize])
        reused += was_reused
        runs.append({"architecture": table_run.architecture, "objective": table_run.objective,
                     "preset": table_run.config.name, "description": OBJECTIVES[table_run.objective],
                     "seed": table_run.seed, "epochs": table_run.config.train.epochs,
                     "run": table_run.directory.relative_to(out).as_posix(), **measures})
    return runs, reused


def objectives_table(settings: TableSettings, out: str | Path, dataset: Dataset | None = None,
                     classifier: Classifier | None = None, progress: bool = True, wait: bool = False) -> dict[str, Any]:
    """Train and measure every run of the table into ``out``; write ``objectives.json`` and
    ``objectives.md``; return the JSON's content. ``dataset``: the data (default: ``settings.data_source``
    loaded); ``classifier``: the score's features (default: the cached LeNet of that data, trained once)."""
    out = Path(out)
    started = time.perf_counter()
    where = provenance()  # now: the code that runs is the checkout as the command starts, not as it ends
    stages: dict[str, float] = {}
    with directory_lock(out, what="objectives folder", wait=wait,
                        hint="another 'vaescope objectives' writes into it; wait for it or choose another --out"):
        data = dataset if dataset is not None else load_dataset(settings.data_source)
        tick = time.perf_counter()
        classifier = classifier or load_classifier(settings.data_source, data)
        stages["classifier"] = time.perf_counter() - tick
        if len(data.x_test) < max(settings.samples, settings.bound_images):
            raise VaescopeError(f"the objectives table scores {settings.samples} samples and bounds {settings.bound_images} "
                                f"images against the test split, which holds {len(data.x_test)}; use fewer")

        plan = table_runs(settings, out)
        tick = time.perf_counter()
        finished_before = sum((r.directory / WEIGHTS_FILE).is_file() for r in plan)
        log.info("training %d runs into %s (%d finished before: reused)", len(plan), out / "runs", finished_before)
        train_many([r.config for r in plan], [r.directory for r in plan], dataset=data, progress=progress)
        stages["training"] = time.perf_counter() - tick

        tick = time.perf_counter()
        with cpu_settings():
            runs, reused = _measure_all(plan, settings, data, classifier, out)
        stages["measures"] = time.perf_counter() - tick

        results: dict[str, Any] = {
            "settings": settings.to_dict(), "objectives": dict(OBJECTIVES),
            "classifier": {"sha256": classifier.record["sha256"],
                           "test_accuracy": classifier.record.get("test_accuracy"),
                           "training_seconds": classifier.record.get("seconds")},
            "runs": runs, "findings": findings(runs),
            "counts": {"trained": len(plan) - finished_before, "reused": finished_before,
                       "measured": len(plan) - reused, "measures_reused": reused},
            "totals": _totals(runs), "stages": stages, "provenance": where,
        }
        stages["total"] = time.perf_counter() - started
        atomic_write_json(out / RESULTS_JSON, results)
        atomic_write_text(out / REPORT_MD, render_report(results))
    log.info("wrote %s and %s", out / RESULTS_JSON, out / REPORT_MD)
    return results


def summary_lines(results: dict[str, Any], out: str | Path) -> list[str]:
    """What the command prints: the findings' sentences, the time, where the files are."""
    return [*finding_sentences(results["findings"]),
            f"{len(results['runs'])} runs in {results['stages']['total']:.0f} s; "
            f"{Path(out) / REPORT_MD} and {Path(out) / RESULTS_JSON}"]


__all__ = ["MEASURES_FILE", "REPORT_MD", "RESULTS_JSON", "measure_run", "negative_elbo", "objectives_table",
           "summary_lines", "trained_likelihood"]
