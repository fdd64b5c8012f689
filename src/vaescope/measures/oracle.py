"""The linear-Gaussian VAE in closed form: what a VAE *should* measure, variable by variable.

A linear VAE -- encoder mean ``mu = A x + a``, a per-variable posterior variance ``sigma_j^2``,
decoder mean ``W z + b``, a Gaussian likelihood of fixed variance ``sigma2`` and a KL weight ``beta``
-- trained on data whose covariance has eigenvalues ``lambda_1 >= lambda_2 >= ...`` reaches, at its
global optimum, probabilistic PCA with the noise variance ``s^2 = beta * sigma2`` (M. E. Tipping and
C. M. Bishop, "Probabilistic Principal Component Analysis", 1999; J. Lucas, G. Tucker, R. Grosse and
M. Norouzi, "Don't Blame the ELBO! A Linear VAE Perspective on Posterior Collapse", 2019: dividing the
beta-weighted loss by beta leaves the ELBO of a model whose noise variance is ``beta * sigma2``).

For variable j (in the order of the eigenvalues):

================  ===========================  ==============================
quantity          active (lambda_j > s^2)      inactive (lambda_j <= s^2)
================  ===========================  ==============================
decoder column    u_j sqrt(lambda_j - s^2)     0
mean sigma_j^2    s^2 / lambda_j               1
Var_X(mu_j)       1 - s^2 / lambda_j           0
KL_j (mean)       1/2 ln(lambda_j / s^2)       0
I(x; z_j)         1/2 ln(lambda_j / s^2)       0
================  ===========================  ==============================

So the variance law ``Var(mu_j) + sigma_j^2 = 1`` holds exactly (and the mean KL is exactly
``-1/2 ln sigma_j^2``) over the training set; for Gaussian data the aggregate posterior of each
variable is N(0, 1), so the mean KL equals the mutual information I(x; z_j); and variable j
collapses when ``beta >= lambda_j / sigma2`` (its collapse threshold). With ``beta = 1`` the
encoder is the exact posterior, so the ELBO equals the exact marginal log-likelihood
``log N(x; mean, W W^T + sigma2 I)`` (:func:`marginal_log_likelihood`).

The eigenvalues to use are those of the covariance the VAE was trained on: the *sample* covariance
with the 1/N normaliser (:func:`data_spectrum`), because a VAE minimises the average loss over its
training set, and vaescope's ``mu_variance`` is the 1/N variance too.

A measured VAE is set against this closed form in :mod:`vaescope.measures.oracle_comparison`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaescope.core.errors import VaescopeError
from vaescope.data.linear import covariance_eigen


def _frozen(values: Any, dtype: Any = np.float64) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class LinearOracle:
    """The closed-form optimum of a linear VAE, for ``latent_dim`` variables sorted like the eigenvalues.

    Arrays are ``(latent_dim,)``: float64, or bool for ``active``. ``eigenvalues`` is the spectrum
    used, padded with zeros when ``latent_dim`` exceeds the data's dimension (those variables are
    inactive). ``noise_variance`` is ``s^2 = beta * sigma2``. See the module docstring for the formulas
    (Tipping and Bishop, "Probabilistic Principal Component Analysis"; Lucas et al., "Don't Blame the
    ELBO! A Linear VAE Perspective on Posterior Collapse").
    """

    sigma2: float
    beta: float
    eigenvalues: np.ndarray
    active: np.ndarray
    mu_variance: np.ndarray
    sigma2_mean: np.ndarray
    kl: np.ndarray
    mutual_information: np.ndarray
    collapse_beta: np.ndarray

    @property
    def latent_dim(self) -> int:
        return len(self.eigenvalues)

    @property
    def noise_variance(self) -> float:
        """``s^2 = beta * sigma2``: the noise variance of the probabilistic PCA the VAE becomes."""
        return self.beta * self.sigma2

    @property
    def active_count(self) -> int:
        return int(self.active.sum())

    @property
    def inactive_count(self) -> int:
        return self.latent_dim - self.active_count

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: the settings, the counts and one entry per variable."""
        variables = [
            {
                "index": j,
                "eigenvalue": float(self.eigenvalues[j]),
                "active": bool(self.active[j]),
                "mu_variance": float(self.mu_variance[j]),
                "sigma2_mean": float(self.sigma2_mean[j]),
                "kl": float(self.kl[j]),
                "mutual_information": float(self.mutual_information[j]),
                "collapse_beta": float(self.collapse_beta[j]),
            }
            for j in range(self.latent_dim)
        ]
        return {
            "sigma2": self.sigma2,
            "beta": self.beta,
            "noise_variance": self.noise_variance,
            "latent_dim": self.latent_dim,
            "active_count": self.active_count,
            "inactive_count": self.inactive_count,
            "variables": variables,
        }


# ---------------------------------------------------------------------------- checks

def _positive(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise VaescopeError(f"{name} is {value!r}; expected a positive number") from None
    if not math.isfinite(number) or number <= 0.0:
        raise VaescopeError(f"{name} is {value!r}; expected a positive finite number (e.g. 0.5)")
    return number


def _latent_dim(latent_dim: int) -> int:
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, (int, np.integer)) or latent_dim < 1:
        raise VaescopeError(f"latent_dim is {latent_dim!r}; expected a positive integer (the number of latent variables)")
    return int(latent_dim)


def _spectrum(eigenvalues: Any, name: str = "eigenvalues") -> np.ndarray:
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise VaescopeError(f"{name} has shape {values.shape}; expected a non-empty 1-D spectrum (D,)")
    if not np.all(np.isfinite(values)):
        raise VaescopeError(f"{name} holds non-finite values; expected finite variances")
    if np.any(values < 0.0):
        raise VaescopeError(f"{name} has a negative value ({values.min():g}); a covariance spectrum is >= 0 "
                            "(clip round-off, as data_spectrum does)")
    if np.any(np.diff(values) > 0.0):
        raise VaescopeError(f"{name} is not sorted; expected descending eigenvalues (np.sort(values)[::-1])")
    return values


def _matrix(x: Any, name: str, columns: int | None = None) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise VaescopeError(f"{name} has shape {array.shape}; expected a 2-D array")
    if columns is not None and array.shape[1] != columns:
        raise VaescopeError(f"{name} has {array.shape[1]} columns; expected {columns} (the data's dimension)")
    if not np.all(np.isfinite(array)):
        raise VaescopeError(f"{name} holds non-finite values; expected finite numbers")
    return array


# ---------------------------------------------------------------------------- the closed form

def linear_oracle(eigenvalues: Any, sigma2: float, beta: float = 1.0, latent_dim: int | None = None) -> LinearOracle:
    """The optimum of a linear VAE on data with covariance spectrum ``eigenvalues`` ``(D,)``, descending.

    ``sigma2``: the decoder's fixed Gaussian variance; ``beta``: the KL weight; ``latent_dim``: the
    number of latent variables (default D). Variables beyond D are inactive (eigenvalue 0). Formulas
    of Tipping and Bishop, "Probabilistic Principal Component Analysis", with the noise ``beta * sigma2``
    of Lucas et al., "Don't Blame the ELBO! A Linear VAE Perspective on Posterior Collapse".
    """
    values = _spectrum(eigenvalues)
    sigma2 = _positive(sigma2, "sigma2")
    beta = _positive(beta, "beta")
    dim = len(values) if latent_dim is None else _latent_dim(latent_dim)
    lam = np.zeros(dim)
    lam[: min(dim, len(values))] = values[:dim]
    s2 = beta * sigma2
    active = lam > s2
    ratio = np.ones(dim)  # s^2 / lambda_j for an active variable, 1 (the prior's variance) otherwise
    ratio[active] = s2 / lam[active]
    kl = np.zeros(dim)
    kl[active] = 0.5 * np.log(lam[active] / s2)
    return LinearOracle(
        sigma2=sigma2,
        beta=beta,
        eigenvalues=_frozen(lam),
        active=_frozen(active, bool),
        mu_variance=_frozen(1.0 - ratio),
        sigma2_mean=_frozen(ratio),
        kl=_frozen(kl),
        mutual_information=_frozen(kl),
        collapse_beta=_frozen(lam / sigma2),
    )


def data_spectrum(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``(D,)`` (descending, float64) and eigenvectors ``(D, D)`` (column j goes with
    eigenvalue j) of the sample covariance of ``x`` ``(N, ...)`` with the 1/N normaliser; images are
    flattened. Round-off below zero is clipped to 0. The sign of each eigenvector is arbitrary."""
    array = np.asarray(x, dtype=np.float64)
    if array.ndim < 2 or len(array) < 2:
        raise VaescopeError(f"data has shape {array.shape}; expected (N, D) with at least 2 points")
    return covariance_eigen(_matrix(array.reshape(len(array), -1), "data"))


def optimal_decoder(eigenvectors: Any, eigenvalues: Any, sigma2: float, beta: float = 1.0,
                    latent_dim: int | None = None) -> np.ndarray:
    """The optimal decoder ``W`` ``(D, latent_dim)``: column j is ``u_j sqrt(max(lambda_j - beta*sigma2, 0))``.

    ``eigenvectors`` ``(D, K)`` (columns, as :func:`data_spectrum` returns them) and ``eigenvalues``
    ``(K,)`` descending. Unique up to an orthogonal rotation of the latent space (and so up to the sign
    and order of the columns); columns beyond K are zero. Tipping and Bishop, "Probabilistic Principal
    Component Analysis", eq. (7), with the noise of Lucas et al., "Don't Blame the ELBO!".
    """
    values = _spectrum(eigenvalues)
    vectors = _matrix(eigenvectors, "eigenvectors")
    if vectors.shape[1] != len(values):
        raise VaescopeError(f"eigenvectors have {vectors.shape[1]} columns for {len(values)} eigenvalues; "
                            "pass the (D, K) columns that go with the K eigenvalues")
    s2 = _positive(beta, "beta") * _positive(sigma2, "sigma2")
    dim = len(values) if latent_dim is None else _latent_dim(latent_dim)
    kept = min(dim, len(values))
    w = np.zeros((vectors.shape[0], dim))
    w[:, :kept] = vectors[:, :kept] * np.sqrt(np.clip(values[:kept] - s2, 0.0, None))
    return w


def optimal_encoder(eigenvectors: Any, eigenvalues: Any, sigma2: float, beta: float = 1.0,
                    latent_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The optimal encoder for :func:`optimal_decoder`'s ``W``: ``A`` ``(latent_dim, D)`` with
    ``mu = A (x - mean)`` and the posterior variances ``(latent_dim,)``.

    It is the exact posterior of probabilistic PCA with noise ``s^2 = beta * sigma2``:
    ``A = M^-1 W^T`` and variances ``s^2 diag(M^-1)`` with ``M = W^T W + s^2 I`` (Tipping and Bishop,
    "Probabilistic Principal Component Analysis", eq. (6)); ``M`` is diagonal here, so a VAE's
    diagonal posterior can represent it exactly (Lucas et al., "Don't Blame the ELBO!").
    """
    w = optimal_decoder(eigenvectors, eigenvalues, sigma2, beta, latent_dim)
    s2 = beta * sigma2
    m = np.sum(w * w, axis=0) + s2  # diag(W^T W) + s^2; W^T W is diagonal (orthogonal columns)
    return w.T / m[:, None], s2 / m


# ---------------------------------------------------------------------------- exact likelihoods

def gaussian_log_likelihood(x: Any, mean: Any, covariance: Any) -> np.ndarray:
    """``log N(x_n; mean, covariance)`` in nats for each row of ``x`` ``(N, D)``: ``(N,)`` float64.

    ``mean`` ``(D,)``, ``covariance`` ``(D, D)`` symmetric positive definite; computed in float64 through
    the Cholesky factor ``L`` (``log det = 2 sum log L_ii``, Mahalanobis term ``|L^-1 (x - mean)|^2``).
    """
    points = _matrix(x, "x")
    dim = points.shape[1]
    centre = np.asarray(mean, dtype=np.float64)
    if centre.shape != (dim,):
        raise VaescopeError(f"mean has shape {centre.shape}; expected ({dim},) like the rows of x")
    cov = _matrix(covariance, "covariance", columns=dim)
    if cov.shape != (dim, dim):
        raise VaescopeError(f"covariance has shape {cov.shape}; expected ({dim}, {dim})")
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * max(1.0, float(np.abs(cov).max()))):
        raise VaescopeError("covariance is not symmetric; pass (C + C.T) / 2")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise VaescopeError("covariance is not positive definite; add a noise variance (W W^T + sigma2 I)") from None
    solved = np.linalg.solve(chol, (points - centre).T)  # (D, N): L^-1 (x - mean)
    log_det = 2.0 * np.sum(np.log(np.diag(chol)))
    return -0.5 * (np.sum(solved * solved, axis=0) + log_det + dim * math.log(2.0 * math.pi))


def marginal_log_likelihood(x: Any, mean: Any, w: Any, sigma2: float) -> np.ndarray:
    """Exact ``log p(x_n)`` ``(N,)`` of the linear-Gaussian model ``x = W z + mean + noise``,
    ``z ~ N(0, I)``, noise ``N(0, sigma2 I)``: ``log N(x; mean, W W^T + sigma2 I)``. ``x`` ``(N, D)``,
    ``mean`` ``(D,)``, ``w`` ``(D, latent_dim)`` (Tipping and Bishop, "Probabilistic Principal Component
    Analysis", eq. (4))."""
    decoder = _matrix(w, "W")
    sigma2 = _positive(sigma2, "sigma2")
    covariance = decoder @ decoder.T + sigma2 * np.eye(len(decoder))
    return gaussian_log_likelihood(x, mean, covariance)


def expected_log_likelihood(eigenvalues: Any, sigma2: float, beta: float = 1.0, latent_dim: int | None = None) -> float:
    """The average of :func:`marginal_log_likelihood` over the data, for the optimal decoder, in nats.

    ``eigenvalues`` ``(D,)``: the *whole* spectrum of the data's covariance ``C`` (all D of them), as
    :func:`data_spectrum` returns it. The model covariance ``S`` shares C's eigenvectors, with
    eigenvalues ``sigma2 + max(lambda_j - beta*sigma2, 0)`` for the first ``latent_dim`` and ``sigma2``
    for the rest, so ``E log p = -1/2 sum_j [ln(2 pi S_j) + lambda_j / S_j]``; over the training set
    with the 1/N covariance this is exact. With ``beta = 1`` it is also the optimal ELBO (the encoder is
    the exact posterior): the best a linear VAE can reach, per example.
    """
    values = _spectrum(eigenvalues)
    sigma2 = _positive(sigma2, "sigma2")
    s2 = _positive(beta, "beta") * sigma2
    dim = len(values) if latent_dim is None else _latent_dim(latent_dim)
    model = np.full(len(values), sigma2)
    kept = min(dim, len(values))
    model[:kept] += np.clip(values[:kept] - s2, 0.0, None)
    return float(-0.5 * np.sum(np.log(2.0 * math.pi * model) + values / model))
