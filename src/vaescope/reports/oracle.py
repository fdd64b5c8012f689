"""The oracle section: a linear VAE's measured latent space beside the closed form of probabilistic PCA.

:func:`measure_oracle` measures a model on points whose covariance spectrum is known (by default the
training points, over which the closed form is exact: :mod:`vaescope.measures.oracle`), and puts
each variable's Var(mu), mean sigma^2, mean KL and I(x; z_j) (He et al.'s estimator), and the
importance-weighted bound, beside the prediction, with the absolute deviation and a pass/fail
against stated tolerances. :func:`oracle_section` draws it for ``inspect``'s report.

The prediction for the bound: with beta = 1 the optimal encoder is the exact posterior, so every
IWAE bound equals log p(x) under the optimal model, ``log N(x; mean, W* W*^T + sigma^2 I)``; for a
decoder that is affine (read as ``W z + b`` from ``decode``, checked on random codes), the model's own
exact log p(x) is given too, which every bound approaches from below as K grows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vaescope.core.errors import VaescopeError
from vaescope.data.dataset import Dataset
from vaescope.data.linear import covariance_eigen
from vaescope.data.sources import load_dataset
from vaescope.measures.bound import importance_weighted_bound
from vaescope.measures.information import mutual_information
from vaescope.measures.intrinsic import flat_points
from vaescope.measures.oracle import LinearOracle, linear_oracle, marginal_log_likelihood, optimal_decoder
from vaescope.measures.oracle_comparison import OracleComparison, compare
from vaescope.measures.statistics import latent_statistics
from vaescope.models.adapters import as_latent_model
from vaescope.models.isolation import untouched
from vaescope.models.likelihoods import Gaussian
from vaescope.reports.html import Paragraph, Section, Table

# Stated tolerances (absolute): what "the oracle section passes" means. Var(mu), sigma^2 (no unit),
# KL and I(x; z_j) in nats per variable, the bound in nats per example. The KL and the statistics
# are exact functions of the encoder; MI is an estimate (its error over M points shrinks as 1/sqrt(M)).
DEFAULT_TOLERANCES = {"mu_variance": 0.03, "sigma2_mean": 0.03, "kl": 0.03, "mutual_information": 0.05,
                      "log_likelihood": 0.05}
QUANTITY_WORDS = {"mu_variance": "Var(mu)", "sigma2_mean": "mean sigma^2", "kl": "mean KL (nats)",
                  "mutual_information": "I(x; z_j) (nats)"}


@dataclass(frozen=True)
class OracleResult:
    """What :func:`measure_oracle` found: the oracle, the comparison, the bounds and exact
    likelihoods (nats per example), the deviations against ``tolerances`` and the verdict."""

    oracle: LinearOracle
    comparison: OracleComparison
    n: int
    points: str
    iwae_ks: tuple[int, ...]
    iwae: tuple[float, ...]
    iwae_n: int
    optimum_log_likelihood: float
    model_log_likelihood: float | None
    decoder_gram_deviation: float | None
    tolerances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))

    @property
    def largest_bound(self) -> float | None:
        return self.iwae[-1] if self.iwae else None

    @property
    def bound_deviation(self) -> float | None:
        """|IWAE at the largest K - exact log p of the optimum| (nats per example)."""
        return None if not self.iwae else abs(self.iwae[-1] - self.optimum_log_likelihood)

    @property
    def checks(self) -> dict[str, bool]:
        """Each compared quantity within its tolerance (the bound only when beta = 1, where it is exact)."""
        out = {name: dev <= self.tolerances[name] for name, dev in self.comparison.max_deviation.items()}
        if self.bound_deviation is not None and self.oracle.beta == 1.0:
            out["log_likelihood"] = self.bound_deviation <= self.tolerances["log_likelihood"]
        out["activity"] = self.comparison.activity_agrees
        return out

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        return {"oracle": self.oracle.to_dict(), "comparison": self.comparison.to_dict(), "n": self.n,
                "points": self.points, "iwae": {"ks": list(self.iwae_ks), "bounds": list(self.iwae), "n": self.iwae_n},
                "optimum_log_likelihood": self.optimum_log_likelihood,
                "model_log_likelihood": self.model_log_likelihood, "bound_deviation": self.bound_deviation,
                "decoder_gram_deviation": self.decoder_gram_deviation, "tolerances": dict(self.tolerances),
                "checks": self.checks, "passed": self.passed}


def _affine_decoder(adapter: Any, latent_dim: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W (P, D), b (P,))`` when ``decode`` is affine in z (within 1e-4 of its scale on random
    codes), else None. Read under :func:`untouched`."""
    with untouched(adapter, seed=seed) as generator:
        device = next((p.device for p in adapter.parameters()), torch.device("cpu"))
        basis = torch.cat([torch.zeros(1, latent_dim), torch.eye(latent_dim)]).to(device)
        decoded = adapter.decode(basis).flatten(1).double().cpu()
        b, w = decoded[0], (decoded[1:] - decoded[0]).T  # (P,), (P, D)
        z = torch.randn(8, latent_dim, generator=generator, device=device)
        check = adapter.decode(z).flatten(1).double().cpu()
    predicted = z.double().cpu() @ w.T + b
    scale = max(1.0, float(check.abs().max()))
    if float((check - predicted).abs().max()) > 1e-4 * scale:
        return None
    return w.numpy(), b.numpy()


def measure_oracle(model: Any, x: np.ndarray | torch.Tensor, sigma2: float, beta: float = 1.0, *,
                   points: str = "the training points", iwae_ks: Sequence[int] = (1, 10, 100), iwae_points: int = 500,
                   mi_points: int = 2000, seed: int = 0, batch_size: int = 2000,
                   tolerances: Mapping[str, float] | None = None) -> OracleResult:
    """Measure ``model`` on ``x`` ``(N, ...)`` (the points the closed form is taken over, e.g. its
    training set) and compare with the linear-Gaussian optimum for decoder variance ``sigma2`` and KL
    weight ``beta``: statistics over all of ``x``, I(x; z_j) over the first ``mi_points``, the bound of
    each K of ``iwae_ks`` over the first ``iwae_points`` (a Gaussian of variance ``sigma2`` on the
    decoded mean). ``tolerances`` override :data:`DEFAULT_TOLERANCES`."""
    adapter = as_latent_model(model)
    array = flat_points(x).astype(np.float64)
    if len(array) < 3:
        raise VaescopeError(f"the oracle needs at least 3 points; got {len(array)}")
    values, vectors = covariance_eigen(array)
    stats = latent_statistics(adapter, x, batch_size=batch_size)
    oracle = linear_oracle(values, sigma2, beta, latent_dim=stats.latent_dim)
    measured: dict[str, Any] = {"mu_variance": stats.mu_variance, "sigma2_mean": stats.sigma2_mean,
                                "kl_mean": stats.kl_mean}
    if mi_points:
        measured["mi"] = mutual_information(adapter, x[:mi_points], seed=seed, batch_size=batch_size).per_variable
    comparison = compare(measured, oracle)
    mean = array.mean(0)
    w_star = optimal_decoder(vectors, values, sigma2, beta, latent_dim=stats.latent_dim)
    head = array[:iwae_points]
    optimum = float(marginal_log_likelihood(head, mean, w_star, sigma2).mean())
    bounds: tuple[float, ...] = ()
    if iwae_ks:
        iwae = importance_weighted_bound(adapter, x[:iwae_points], tuple(iwae_ks), likelihood=Gaussian(variance=sigma2),
                                         seed=seed)
        bounds = tuple(float(b) for b in iwae.bounds)
    affine = _affine_decoder(adapter, stats.latent_dim, seed)
    model_ll = gram = None
    if affine is not None:
        w, b = affine
        model_ll = float(marginal_log_likelihood(head, b, w, sigma2).mean())
        gram = float(np.abs(w @ w.T - w_star @ w_star.T).max())
    limits = dict(DEFAULT_TOLERANCES, **(tolerances or {}))
    return OracleResult(oracle, comparison, len(array), points, tuple(iwae_ks), bounds, len(head), optimum,
                        model_ll, gram, limits)


def is_linear_source(data: Any) -> bool:
    """Whether ``data`` names ``synthetic:linear=...`` data (whose closed form the oracle knows)."""
    return isinstance(data, str) and data.strip().lower().startswith("synthetic:linear=")


def oracle_settings(oracle: Mapping[str, Any] | None, likelihood: Any = None) -> tuple[float, float]:
    """``(sigma2, beta)`` from ``oracle`` (``{"sigma2": ..., "beta": ...}``, beta 1 by default), else the
    variance of a fixed-variance Gaussian ``likelihood`` (beta 1)."""
    if oracle is not None:
        unknown = sorted(set(oracle) - {"sigma2", "beta"})
        if unknown or "sigma2" not in oracle:
            raise VaescopeError(f"oracle is {dict(oracle)!r}; expected {{'sigma2': decoder variance, 'beta': KL weight}} "
                                "(beta defaults to 1)")
        return float(oracle["sigma2"]), float(oracle.get("beta", 1.0))
    if isinstance(likelihood, Gaussian) and isinstance(likelihood.variance, (int, float)) and likelihood.link == "identity":
        return float(likelihood.variance), 1.0
    raise VaescopeError("the oracle needs the decoder's Gaussian variance: pass oracle={'sigma2': ..., 'beta': ...}")


def oracle_for(model: Any, data: Any, oracle: Mapping[str, Any] | None = None, likelihood: Any = None,
               seed: int = 0, **options: Any) -> OracleResult | None:
    """:func:`measure_oracle` when ``data`` are linear (``synthetic:linear=...``) or ``oracle`` settings are
    given, else None. The points: the training split of a source or :class:`Dataset` (where the
    closed form is exact), or the given array itself."""
    if oracle is None and not is_linear_source(data):
        return None
    sigma2, beta = oracle_settings(oracle, likelihood)
    if isinstance(data, (str, Dataset)):
        dataset = load_dataset(data) if isinstance(data, str) else data
        return measure_oracle(model, dataset.x_train, sigma2, beta, seed=seed,
                              points=f"the training split of {dataset.name}", **options)
    return measure_oracle(model, data, sigma2, beta, seed=seed, points="the given points", **options)


def _cell(value: float, predicted: float) -> str:
    return f"{value:.4f} / {predicted:.4f} ({abs(value - predicted):.1e})"


def oracle_section(result: OracleResult) -> Section:
    """The report section: the settings and verdict, one row per variable, and the bounds."""
    oracle, comparison = result.oracle, result.comparison
    names = [n for n in ("mu_variance", "sigma2_mean", "kl", "mutual_information") if n in comparison.measured]
    rows = []
    for j in range(oracle.latent_dim):
        rows.append([f"z{int(comparison.order[j])}", f"{oracle.eigenvalues[j]:.4g}",
                     "yes" if oracle.active[j] else "no", "yes" if comparison.measured_active[j] else "no",
                     *[_cell(comparison.measured[n][j], comparison.predicted[n][j]) for n in names]])
    checks = result.checks
    verdict = "passes" if result.passed else "fails"
    failed = [k for k, ok in checks.items() if not ok]
    words = [Paragraph(
        f"The closed form of a linear VAE (probabilistic PCA: M. E. Tipping and C. M. Bishop, \"Probabilistic "
        f"Principal Component Analysis\"; J. Lucas et al., \"Don't Blame the ELBO! A Linear VAE Perspective on "
        f"Posterior Collapse\") for decoder variance sigma^2 = {oracle.sigma2:g} and KL weight beta = "
        f"{oracle.beta:g} (noise s^2 = {oracle.noise_variance:g}), from the covariance spectrum of "
        f"{result.points} ({result.n} points, 1/N): variable j is active iff lambda_j > s^2; it predicts "
        f"{oracle.active_count} active of {oracle.latent_dim}, and {oracle.latent_dim - comparison.measured_inactive_count} "
        f"are measured active (Var(mu) >= {comparison.active_threshold:g}). Measured variables are matched to the "
        f"eigenvalues by Var(mu), descending. The comparison **{verdict}** its tolerances "
        + ", ".join(f"{QUANTITY_WORDS.get(k, k)} {v:g}" for k, v in result.tolerances.items())
        + (f" (outside: {', '.join(failed)})." if failed else "."))]
    words.append(Table(["variable", "lambda_j", "active (closed form)", "active (measured)",
                        *[f"{QUANTITY_WORDS[n]}: measured / closed form (|dev|)" for n in names]], rows,
                       caption="Largest deviations: " + ", ".join(
                           f"{QUANTITY_WORDS[n]} {comparison.max_deviation[n]:.2e}" for n in names) + "."))
    bound_rows = [[f"IWAE, K = {k}", f"{b:.4f}"] for k, b in zip(result.iwae_ks, result.iwae)]
    bound_rows.append(["exact log p(x), the optimal model (closed form)", f"{result.optimum_log_likelihood:.4f}"])
    if result.model_log_likelihood is not None:
        bound_rows.append(["exact log p(x), this model's affine decoder", f"{result.model_log_likelihood:.4f}"])
    note = (" With beta = 1 every bound of the optimum equals its exact log p(x) (the encoder is the exact posterior)."
            if oracle.beta == 1.0 else " With beta != 1 the encoder is not the exact posterior: the bounds lie below "
            "the model's exact log p(x) and rise toward it with K.")
    caption = f"Nats per example over the first {result.iwae_n} points; Gaussian likelihood of variance {oracle.sigma2:g}." + note
    if result.decoder_gram_deviation is not None:
        caption += (f" The decoder's W W^T is within {result.decoder_gram_deviation:.2e} of the optimum's "
                    "(W itself is unique only up to a rotation).")
    words.append(Table(["quantity", "nats per example"], bound_rows, caption=caption))
    return Section("oracle", "The linear-Gaussian oracle", words)


def oracle_words(result: OracleResult) -> str:
    """One sentence for a summary: the verdict and the largest deviations."""
    devs = ", ".join(f"{QUANTITY_WORDS[n]} {d:.1e}" for n, d in result.comparison.max_deviation.items())
    bound = "" if result.bound_deviation is None else f", bound {result.bound_deviation:.1e} nats"
    return (f"the linear-Gaussian oracle comparison {'passes' if result.passed else 'fails'} (largest deviations: "
            f"{devs}{bound}; {result.comparison.measured_inactive_count} inactive measured, "
            f"{result.comparison.predicted_inactive_count} predicted)")


def exact_bound_gap(result: OracleResult) -> float | None:
    """|largest-K bound - this model's exact log p(x)| (nats), when the decoder is affine."""
    if result.model_log_likelihood is None or not result.iwae:
        return None
    return abs(result.iwae[-1] - result.model_log_likelihood)

