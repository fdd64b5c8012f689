"""How every measure reads a model and its data: one place, so that every analysis reads alike.

- :func:`model_batches`: the data as batches ``(B, ...)`` on the model's device through
  :func:`vaescope.data.batches.iter_batches` (arrays, tensors, dicts, DataLoaders, any iterable;
  ``batch_key=``, ``input_fn=``). Floating batches are cast to the dtype of the model's floating
  parameters (float64 data reach a float32 model as float32, as before); integers (token ids,
  counts) are never cast.
- :func:`encode` and :class:`Decoder`: the adapter's encoder and decoder, whose failures on a batch of
  the wrong shape become one line naming the batch, what the model was given and the option to fix it.
- :class:`Decoder` also holds the decoder's likelihood (:mod:`vaescope.models.likelihoods`) and reads
  the decoder's output the way that likelihood needs: vaescope's logits convention
  (``adapter.decode``: pythae's pixel means become logits) for the likelihoods defined on logits
  (Bernoulli logits, Gaussian around sigmoid(logits)); the decoder's own output
  (``adapter.decode_output``) for every other one.

Every function here runs inside the caller's :func:`vaescope.models.isolation.untouched` block; none
changes a mode or draws from a global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from vaescope.core.errors import VaescopeError
from vaescope.data.batches import BatchKey, DataSource, InputFn, iter_batches
from vaescope.models.adapters import LatentModelAdapter
from vaescope.models.isolation import untouched
from vaescope.models.likelihoods import Bernoulli, Gaussian, Likelihood, resolve_likelihood

LOG_2PI = math.log(2.0 * math.pi)
LikelihoodSpec = str | Likelihood | Callable[..., torch.Tensor] | None


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) of each variable, elementwise (broadcasting): ``(..., D)`` nats."""
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar + LOG_2PI)


def measure_device(model: LatentModelAdapter, device: str | torch.device | None) -> torch.device:
    """``device`` when given, else the model's."""
    return torch.device(device) if device is not None else model.device


def floating_dtype(model: LatentModelAdapter) -> torch.dtype | None:
    """The dtype of the model's first floating parameter, else buffer; None (data kept as they are) for a
    pair of functions without either."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def model_batches(model: LatentModelAdapter, data: DataSource, *, batch_size: int, batch_key: BatchKey = None,
                  input_fn: InputFn | None = None, device: str | torch.device | None = None,
                  limit: int | None = None) -> Iterator[torch.Tensor]:
    """The batches ``(B, ...)`` the model is given (see the module docstring)."""
    yield from iter_batches(data, batch_size=batch_size, batch_key=batch_key, input_fn=input_fn,
                            device=measure_device(model, device), limit=limit, dtype=floating_dtype(model))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _batch_words(x: torch.Tensor) -> str:
    return f"a batch ({', '.join(map(str, x.shape))}) {str(x.dtype).removeprefix('torch.')}"


def encode(model: LatentModelAdapter, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.encode(x)``: ``(mu, logvar)``, each ``(B, D)``; a failure of the user's encoder on ``x``
    is one line saying what it was given and how to give it something else."""
    try:
        return model.encode(x)
    except VaescopeError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise VaescopeError(f"the encoder of {model.kind} failed on {_batch_words(x)} ({_first_line(err)}); give data "
                            "shaped as the model's forward takes it: pass batch_key= to choose the input inside "
                            "each batch, or input_fn= to build it") from err


def reads_logits(likelihood: Likelihood) -> bool:
    """True for the likelihoods written on vaescope's logits (what ``adapter.decode`` returns)."""
    return ((isinstance(likelihood, Bernoulli) and likelihood.logits)
            or (isinstance(likelihood, Gaussian) and likelihood.link == "sigmoid"))


@dataclass(frozen=True)
class Decoder:
    """A model's decoder with its likelihood: ``decode(z)`` gives what ``likelihood`` reads."""

    model: LatentModelAdapter
    likelihood: Likelihood

    def decode(self, z: torch.Tensor) -> Any:
        """Codes ``(B, D)`` -> the decoder's output as the likelihood reads it."""
        try:
            if reads_logits(self.likelihood):
                return self.model.decode(z)
            return self.model.decode_output(z)
        except VaescopeError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise VaescopeError(f"the decoder of {self.model.kind} failed on codes ({', '.join(map(str, z.shape))}) "
                                f"({_first_line(err)}); check the model's decode") from err

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) ``(B,)`` nats for data ``x`` ``(B, ...)`` and codes ``z`` ``(B, D)``."""
        return self.likelihood.log_likelihood(x, self.decode(z))

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] (``(B, ..., V)`` probabilities for a categorical likelihood)."""
        return self.likelihood.mean(self.decode(z))

    def describe(self) -> str:
        return self.likelihood.describe()


def decoder(model: LatentModelAdapter, likelihood: LikelihoodSpec = None, latent_dim: int | None = None,
            device: torch.device | None = None) -> Decoder:
    """The model's :class:`Decoder` for ``likelihood`` (see :func:`vaescope.models.likelihoods.resolve_likelihood`).

    ``likelihood`` None: the model's own when it says one (a pythae model's ``reconstruction_loss``),
    else the Bernoulli on logits for a decoder returning a tensor or pixel means (vaescope's convention),
    the decoder's ``log_prob`` for one returning a ``torch.distributions`` object; a decoder returning a
    tuple or dict needs ``likelihood=``. Inferring looks at the decoder's output for two zero codes
    (``latent_dim`` of them, default the model's).
    """
    if likelihood is None and model.reconstruction is not None:
        likelihood = model.reconstruction
    if likelihood is not None or model.decoder_output == "mean":
        return Decoder(model, resolve_likelihood(likelihood))
    dim = latent_dim or model.latent_dim
    if dim is None:
        raise VaescopeError(f"the likelihood of {model.kind}'s decoder cannot be inferred before the latent size is "
                            "known; pass likelihood= (e.g. 'bernoulli', 'gaussian:decoded', 'categorical')")
    with untouched(model):  # a look at the decoder's output is a forward like any other
        example = model.decode_output(torch.zeros(2, dim, device=device or model.device,
                                                     dtype=floating_dtype(model) or torch.float32))
    return Decoder(model, resolve_likelihood(None, example))

