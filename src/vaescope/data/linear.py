"""Gaussian data with a known covariance spectrum, for the linear VAE's closed form (:mod:`vaescope.measures.oracle`).

``x = (g * sqrt(lambda)) Q^T`` with ``g`` standard normal ``(n, D)`` and ``Q`` a random orthogonal
``(D, D)`` matrix: the population covariance is ``Q diag(lambda) Q^T``, so column j of ``Q`` is the
eigenvector of eigenvalue ``lambda_j``. Dimensions beyond the spectrum have variance 0 (the data lie
on a ``len(spectrum)``-dimensional subspace of R^D).

The source syntax (for ``--data``)::

    synthetic:linear=4,2,1,0.3                  # D = 4, the spectrum given
    synthetic:linear=4,2,1,0.1x17,seed=3        # "VxK" repeats V K times: D = 20
    synthetic:linear=4,2,1,dim=20,n=5000,test=1000
    synthetic:linear=mine.npz,n=5000            # the spectrum of mine.npz's x_train (1/N covariance)

``linear=`` takes the eigenvalues (descending, >= 0) separated by commas, or one path to an ``.npz``
with ``x_train`` (read with vaescope's bounded reader), whose sample covariance spectrum (1/N,
:func:`vaescope.measures.oracle`'s convention, computed here in float64) is used, all of it. The
options that follow, also comma-separated, are ``dim`` (the data's dimension, at least the spectrum's
length; default that length), ``n`` (training points, default 10000), ``test`` (test points, default
2000) and ``seed`` (default 0). A token without ``=`` continues the spectrum, so no quoting is needed
in a shell.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaescope.core.errors import VaescopeError
from vaescope.data.dataset import Dataset, to_float
from vaescope.data.readers import load_npz

DEFAULT_N = 10000
DEFAULT_TEST = 2000
PREFIX = "synthetic:"
SYNTAX = ("synthetic:linear=V1,V2,...[,dim=D][,n=N][,test=M][,seed=S] (V descending >= 0, 'VxK' repeats V K "
          "times; or linear=FILE.npz for the spectrum of its x_train)")
_REPEAT = re.compile(r"^(.+)x(\d+)$")


def _check_spectrum(spectrum: Sequence[float]) -> np.ndarray:
    values = np.asarray(spectrum, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise VaescopeError(f"spectrum has shape {values.shape}; expected a non-empty list of variances")
    if not np.all(np.isfinite(values)) or np.any(values < 0.0):
        raise VaescopeError(f"spectrum {values.tolist()} has a negative or non-finite value; variances are finite and >= 0")
    if np.any(np.diff(values) > 0.0):
        raise VaescopeError(f"spectrum {values.tolist()} is not descending; list the variances from largest to smallest")
    return values


def random_orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed orthogonal ``(dim, dim)`` matrix: QR of a Gaussian matrix with the signs of
    R's diagonal moved into Q (F. Mezzadri, "How to generate random matrices from the classical
    compact groups", 2007)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs


def linear_gaussian_data(spectrum: Sequence[float], n: int, dim: int | None = None,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of a zero-mean Gaussian with covariance eigenvalues ``spectrum`` (descending).

    Returns ``x`` ``(n, D)`` float32 and the eigenvectors ``(D, D)`` float64, column j with
    ``spectrum[j]`` (eigenvalue 0 for j >= len(spectrum)); ``D = dim`` or ``len(spectrum)``.
    Deterministic: from ``numpy.random.default_rng(seed)``, the rotation is drawn first, then the
    ``(n, D)`` normal draws row by row, so the first rows of a larger ``n`` are the same points.
    """
    values = _check_spectrum(spectrum)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise VaescopeError(f"n is {n!r}; expected a positive number of points")
    size = len(values) if dim is None else dim
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < len(values):
        raise VaescopeError(f"dim is {dim!r}; expected an integer at least the spectrum's length ({len(values)})")
    size = int(size)
    rng = np.random.default_rng(seed)
    rotation = random_orthogonal(size, rng)
    scale = np.zeros(size)
    scale[: len(values)] = np.sqrt(values)
    g = rng.standard_normal((int(n), size))
    x = (g * scale) @ rotation.T
    return x.astype(np.float32), rotation


@dataclass(frozen=True)
class LinearSource:
    """A parsed ``synthetic:linear=...`` source: the spectrum, the dimension, the sizes and the seed."""

    spectrum: tuple[float, ...]
    dim: int
    n: int = DEFAULT_N
    test: int = DEFAULT_TEST
    seed: int = 0
    file: str = ""  # the .npz whose spectrum this is, or "" for a spectrum given in the source

    @property
    def source(self) -> str:
        """The canonical source string (every option written out): parses back to this object."""
        values = self.file or ",".join(np.format_float_positional(v, trim="-") for v in self.spectrum)  # shortest exact text
        return f"{PREFIX}linear={values},dim={self.dim},n={self.n},test={self.test},seed={self.seed}"

    @property
    def name(self) -> str:
        """A short dataset name: ``linear-D<dim>-seed<S>`` (the spectrum is in :attr:`source`)."""
        return f"synthetic-linear-d{self.dim}" + (f"-seed{self.seed}" if self.seed else "")

    @property
    def eigenvalues(self) -> np.ndarray:
        """The population spectrum over all ``dim`` dimensions ``(dim,)``: zeros past the given ones."""
        values = np.zeros(self.dim)
        values[: len(self.spectrum)] = self.spectrum
        return values

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``x_train`` ``(n, dim)``, ``x_test`` ``(test, dim)`` float32 and the eigenvectors ``(dim, dim)``:
        one draw of ``n + test`` points, the first ``n`` for training."""
        x, vectors = linear_gaussian_data(self.spectrum, self.n + self.test, self.dim, self.seed)
        return x[: self.n], x[self.n :], vectors


def covariance_eigen(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``(D,)`` descending and eigenvectors ``(D, D)`` (column j with eigenvalue j) of the
    sample covariance of ``x`` ``(N, D)`` with the 1/N normaliser, in float64; round-off below 0 clipped.
    The one definition (:func:`vaescope.measures.oracle.data_spectrum` checks its input and calls it)."""
    array = np.asarray(x, dtype=np.float64)
    centred = array - array.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred / len(array))
    order = np.argsort(values)[::-1]
    return np.clip(values[order], 0.0, None), vectors[:, order]


def file_spectrum(path: str | Path) -> np.ndarray:
    """The covariance spectrum ``(D,)`` (:func:`covariance_eigen`; images flattened) of an ``.npz``'s
    ``x_train``, read by vaescope's bounded ``.npz`` reader (values in [0, 1], uint8 as value/255)."""
    data = load_npz(path)
    return covariance_eigen(to_float(data.x_train).reshape(len(data.x_train), -1))[0]


def load_linear(source: str) -> Dataset:
    """The dataset of a ``synthetic:linear=...`` source: ``x_train`` ``(n, dim)`` and ``x_test`` ``(test, dim)``
    float32 vectors (not images, not in [0, 1]), no labels."""
    parsed = parse_linear_source(source)
    x_train, x_test, _ = parsed.draw()
    return Dataset(parsed.name, x_train, None, x_test, None)


def _number(token: str, source: str) -> list[float]:
    repeat = _REPEAT.match(token)
    text, count = (repeat.group(1), int(repeat.group(2))) if repeat else (token, 1)
    try:
        value = float(text)
    except ValueError:
        raise VaescopeError(f"data source {source!r}: {token!r} is not a number; expected {SYNTAX}") from None
    if not math.isfinite(value) or count < 1:
        raise VaescopeError(f"data source {source!r}: {token!r} is not a finite number repeated at least once")
    return [value] * count


def _count(key: str, text: str, source: str, minimum: int) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) < minimum:
        raise VaescopeError(f"data source {source!r}: {key}={text!r}; expected an integer >= {minimum}")
    return int(text)


def parse_linear_source(source: str) -> LinearSource:
    """``synthetic:linear=4,2,1,0.3[,dim=D][,n=N][,test=M][,seed=S]`` -> :class:`LinearSource`
    (the ``synthetic:`` prefix is optional; see the module docstring for the syntax)."""
    text = str(source).strip()
    body = text[len(PREFIX):] if text.lower().startswith(PREFIX) else text
    if not body.lower().startswith("linear="):
        raise VaescopeError(f"data source {source!r} is not a linear source; expected {SYNTAX}")
    tokens = [t.strip() for t in body[len("linear="):].split(",")]
    spectrum: list[float] = []
    options: dict[str, str] = {}
    file = ""
    if tokens and tokens[0].lower().endswith(".npz"):
        file = tokens.pop(0)
        spectrum.extend(file_spectrum(Path(file).expanduser()).tolist())
    for token in tokens:
        if "=" not in token:
            if file:
                raise VaescopeError(f"data source {source!r}: {token!r} follows the file {file!r}; give either a "
                                    f"file or eigenvalues: {SYNTAX}")
            if options:
                raise VaescopeError(f"data source {source!r}: eigenvalue {token!r} comes after an option; "
                                    f"list the spectrum first: {SYNTAX}")
            spectrum.extend(_number(token, text))
            continue
        key, _, value = token.partition("=")
        key = key.strip().lower()
        if key not in ("dim", "n", "test", "seed"):
            raise VaescopeError(f"data source {source!r}: unknown option {key!r}; the options are dim, n, test, seed")
        if key in options:
            raise VaescopeError(f"data source {source!r}: option {key!r} given twice; give it once")
        options[key] = value.strip()
    if not spectrum:
        raise VaescopeError(f"data source {source!r} has no eigenvalues; expected {SYNTAX}")
    values = _check_spectrum(spectrum)
    dim = _count("dim", options["dim"], text, len(values)) if "dim" in options else len(values)
    return LinearSource(
        spectrum=tuple(float(v) for v in values),
        dim=dim,
        n=_count("n", options["n"], text, 1) if "n" in options else DEFAULT_N,
        test=_count("test", options["test"], text, 0) if "test" in options else DEFAULT_TEST,
        seed=_count("seed", options["seed"], text, 0) if "seed" in options else 0,
        file=file,
    )
