"""Adapters: any VAE -> the one contract every vaescope analysis reads.

:func:`as_latent_model` turns each of these into a :class:`LatentModelAdapter` whose
``encode(x)`` gives ``(mu, logvar)``, each ``(B, D)``, and whose ``decode(z)`` takes ``(B, D)``
codes and gives ``(B, C, H, W)`` Bernoulli logits (what
:func:`vaescope.models.objectives.reconstruction_error` expects):

- a module with ``encode(x) -> (mu, logvar)`` and ``decode(z)`` (vaescope's own models; ``decode``
  may be missing when only statistics are wanted);
- ``encode(x)`` returning a ``torch.distributions.Normal`` or ``Independent(Normal)``:
  mu = loc, logvar = 2 log scale;
- a pythae model (``pythae.models.VAE`` and relatives): ``model.encoder(x)`` gives a ``ModelOutput``
  with ``embedding`` and ``log_covariance``, ``model.decoder(z)`` one with ``reconstruction``. pythae's
  decoders end in a sigmoid and its losses read ``reconstruction`` as pixel means in [0, 1], so the
  adapter hands vaescope ``logit(clamp(mean, 1e-6, 1 - 1e-6))``: the Bernoulli error of those logits
  equals pythae's own BCE of the mean wherever the mean lies inside the clamp;
- a pair of plain functions ``(encode_fn, decode_fn)``.

Latents that are not flat, e.g. ``(B, C, h, w)``, are flattened to ``(B, D)`` with D = C*h*w for
every analysis (each element is a variable, index = row-major position); ``latent_shape`` keeps
``(C, h, w)`` so that tables and figures can fold results back (:func:`fold`).

The adapter is an ``nn.Module`` holding the user's module as ``adapter.module``: ``.eval()``,
``.train()``, ``.to(device)`` and ``.parameters()`` act on it. ``as_latent_model`` is idempotent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

from vaescope.core.errors import VaescopeError

DecoderOutput = Literal["logits", "mean"]
MEAN_CLAMP = 1e-6  # pixel means are clamped to [eps, 1 - eps] before the logit

ACCEPTED = ("a module with encode(x) -> (mu, logvar) and decode(z); encode(x) returning "
            "torch.distributions.Normal or Independent(Normal); a pythae VAE (model.encoder / model.decoder); "
            "or a pair of functions (encode_fn, decode_fn)")


def _is_pythae(obj: Any) -> bool:
    return any(cls.__module__.split(".")[0] == "pythae" for cls in type(obj).__mro__)


def _posterior(out: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) from what an encoder returned, in the encoder's own latent shape."""
    if isinstance(out, Independent):
        out = out.base_dist
    if isinstance(out, Normal):
        mu, scale = torch.broadcast_tensors(out.loc, out.scale)
        return mu, 2.0 * scale.log()
    if isinstance(out, Mapping) and "embedding" in out:  # pythae's ModelOutput
        if "log_covariance" not in out:
            raise VaescopeError(
                f"{where} returned no log_covariance (keys: {', '.join(out)}): vaescope measures Gaussian "
                "VAEs; an autoencoder has no posterior variance to measure")
        return out["embedding"], out["log_covariance"]
    if isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out):
        mu, logvar = out
        if mu.shape != logvar.shape:
            raise VaescopeError(f"{where} returned mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)}; "
                                "they must have the same shape")
        return mu, logvar
    got = f"a tuple of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
    raise VaescopeError(f"{where} returned {got}; vaescope accepts (mu, logvar), a Normal, an Independent(Normal) "
                        "or pythae's ModelOutput(embedding, log_covariance); wrap it with "
                        "vaescope.as_latent_model(encode_fn=..., decode_fn=...)")


def _likelihood(out: Any, where: str) -> tuple[torch.Tensor, bool]:
    """(tensor, is_logits) from what a decoder returned."""
    if isinstance(out, Independent):
        out = out.base_dist
    if isinstance(out, Bernoulli):
        return out.logits, True
    if isinstance(out, Mapping) and "reconstruction" in out:  # pythae's ModelOutput
        return out["reconstruction"], False
    if isinstance(out, torch.Tensor):
        return out, False
    raise VaescopeError(f"{where} returned {type(out).__name__}; vaescope accepts a tensor, a Bernoulli "
                        "or pythae's ModelOutput(reconstruction)")


class LatentModelAdapter(nn.Module):
    """Any VAE seen as ``encode(x) -> (mu, logvar)`` ``(B, D)`` and ``decode(z (B, D)) -> logits``.

    Build it with :func:`as_latent_model`. Attributes: ``module`` (the user's module, or None for
    plain functions), ``kind`` (how it was recognised), ``decoder_output`` ("logits" or "mean": what
    the user's decoder returns), ``reconstruction`` (the likelihood the model was trained with,
    "bernoulli" or "gaussian", when the model says so, else None), ``latent_shape`` (the encoder's
    per-example latent shape, known after the first ``encode`` or given).
    """

    def __init__(self, encode_fn: Callable[[torch.Tensor], Any], decode_fn: Callable[[torch.Tensor], Any] | None,
                 module: nn.Module | None, kind: str, decoder_output: DecoderOutput = "logits",
                 latent_shape: tuple[int, ...] | None = None, reconstruction: str | None = None) -> None:
        super().__init__()
        if decoder_output not in ("logits", "mean"):
            raise VaescopeError(f"decoder_output is {decoder_output!r}; use 'logits' or 'mean' (pixel means in [0, 1])")
        self.module = module
        if module is not None:  # the functions belong to it: keep them out of the module tree
            object.__setattr__(self, "_encode_fn", encode_fn)
            object.__setattr__(self, "_decode_fn", decode_fn)
        else:  # plain functions, or modules passed as functions (then .eval() and .to() reach them)
            self._encode_fn = encode_fn
            self._decode_fn = decode_fn
        self.kind = kind
        self.decoder_output: DecoderOutput = decoder_output
        self.reconstruction = reconstruction
        # a shape given or read from the model's attributes, until the encoder shows the real one
        self._hint = None if latent_shape is None else tuple(int(s) for s in latent_shape)
        self._observed: tuple[int, ...] | None = None

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """The per-example latent shape: ``(D,)`` for flat latents, ``(C, h, w)`` for maps."""
        return self._observed if self._observed is not None else self._hint

    @property
    def latent_dim(self) -> int | None:
        """D, the number of latent variables (None until the shape is known)."""
        return None if self.latent_shape is None else math.prod(self.latent_shape)

    @property
    def device(self) -> torch.device:
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` images -> ``(mu, logvar)``, each ``(B, D)`` (flattened row-major)."""
        mu, logvar = _posterior(self._encode_fn(x), f"the encoder of {self.kind}")
        shape = tuple(mu.shape[1:])
        if self._observed is None:
            if self._hint is not None and math.prod(self._hint) != math.prod(shape):
                raise VaescopeError(f"the encoder of {self.kind} gave latents of shape {shape}, but its latent "
                                    f"size is given as {self._hint}; pass the right latent_shape")
            self._observed = shape
        elif shape != self._observed:
            raise VaescopeError(f"the encoder of {self.kind} gave latents of shape {shape}, earlier {self._observed}; "
                                "the latent shape must not change")
        return mu.reshape(len(mu), -1), logvar.reshape(len(logvar), -1)

    def _decoded(self, z: torch.Tensor) -> Any:
        """What the user's decoder returns for codes ``(B, D)`` (reshaped to the latent shape first)."""
        if self._decode_fn is None:
            raise VaescopeError(f"{self.kind} has no decode(z); this analysis decodes codes, give the model a decode "
                                "method or use vaescope.as_latent_model(encode_fn=..., decode_fn=...)")
        # before any encode, with no shape given or known, the latents are taken to be flat
        shape = self.latent_shape or (int(z.shape[-1]),)
        if z.ndim != 2 or z.shape[1] != math.prod(shape):
            raise VaescopeError(f"decode got codes of shape {tuple(z.shape)}; expected (B, {math.prod(shape)})")
        return self._decode_fn(z.reshape(len(z), *shape))

    def decode_output(self, z: torch.Tensor) -> Any:
        """``(B, D)`` codes -> the decoder's own output, for a likelihood to read
        (:mod:`vaescope.models.likelihoods`): a Bernoulli distribution gives its logits, pythae's
        ``ModelOutput`` its ``reconstruction`` (pixel means); anything else (a tensor, a tuple such as
        ``(mean, logvar)``, a dict, a ``torch.distributions`` object) is returned as it is."""
        out = self._decoded(z)
        base = out.base_dist if isinstance(out, Independent) else out
        if isinstance(base, Bernoulli):
            return base.logits
        if isinstance(out, Mapping) and "reconstruction" in out:
            return out["reconstruction"]
        return out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` codes -> Bernoulli logits ``(B, C, H, W)`` (pixel means are their sigmoid)."""
        out, is_logits = _likelihood(self._decoded(z), f"the decoder of {self.kind}")
        if is_logits or self.decoder_output == "logits":
            return out
        low, high = (float(v) for v in torch.aminmax(out.detach()))
        if low < -1e-4 or high > 1 + 1e-4:
            raise VaescopeError(
                f"the decoder of {self.kind} returned values in [{low:.3g}, {high:.3g}], not pixel means in [0, 1]; "
                "pass decoder_output='logits' if they are logits (vaescope's likelihoods read means in [0, 1])")
        return torch.logit(out, eps=MEAN_CLAMP)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(x)

    def describe(self) -> str:
        """One sentence on what was recognised and what decode returns (for reports)."""
        source = ("pixel means in [0, 1]; vaescope uses logit(clamp(mean, 1e-6, 1 - 1e-6)) as Bernoulli logits"
                  if self.decoder_output == "mean" else "Bernoulli logits")
        shape = "unknown" if self.latent_shape is None else "x".join(map(str, self.latent_shape)) or "1"
        return f"{self.kind}; latent shape {shape}; the decoder returns {source}"

    def extra_repr(self) -> str:
        return self.describe()


def as_latent_model(obj: Any = None, *, encode_fn: Callable[[torch.Tensor], Any] | None = None,
                    decode_fn: Callable[[torch.Tensor], Any] | None = None,
                    decoder_output: DecoderOutput | None = None,
                    latent_shape: tuple[int, ...] | None = None,
                    module: nn.Module | None = None) -> LatentModelAdapter:
    """``obj`` (or ``encode_fn``/``decode_fn``) as a :class:`LatentModelAdapter`; see the module doc.

    ``decoder_output``: what the decoder returns, "logits" (default; vaescope's models) or "mean"
    (pixel means in [0, 1]; the default for pythae). ``latent_shape``: the per-example latent shape,
    needed only to decode a latent map before anything was encoded (learned from the first ``encode``,
    read from ``latent_dim`` or pythae's ``model_config`` when the model has them; flat otherwise). ``module``: with
    plain functions, the module they run, so that the adapter's ``.eval()``/``.to()`` reach it.
    """
    if isinstance(obj, LatentModelAdapter):
        if encode_fn is not None or decode_fn is not None or decoder_output is not None:
            raise VaescopeError("as_latent_model got an adapter and functions or options; pass one or the other")
        return obj
    if obj is None or (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(callable(f) for f in obj)):
        if obj is not None:
            encode_fn, decode_fn = obj
        if encode_fn is None:
            raise VaescopeError(f"as_latent_model needs a model or encode_fn; it accepts {ACCEPTED}")
        return LatentModelAdapter(encode_fn, decode_fn, module, "functions", decoder_output or "logits", latent_shape)
    if encode_fn is not None or decode_fn is not None or module is not None:
        raise VaescopeError("as_latent_model got a model and encode_fn/decode_fn/module; pass one or the other")
    module = obj if isinstance(obj, nn.Module) else None
    if callable(getattr(obj, "encode", None)) and not _is_pythae(obj):
        decode = getattr(obj, "decode", None)
        dim = getattr(obj, "latent_dim", None)
        shape = latent_shape or ((dim,) if isinstance(dim, int) and dim > 0 else None)
        return LatentModelAdapter(obj.encode, decode if callable(decode) else None, module,
                                  f"{type(obj).__name__} (encode/decode)", decoder_output or "logits", shape)
    encoder, decoder = getattr(obj, "encoder", None), getattr(obj, "decoder", None)
    if callable(encoder) and callable(decoder):
        pythae = _is_pythae(obj)
        config = getattr(obj, "model_config", None)
        dim = getattr(config, "latent_dim", None)
        shape = latent_shape or ((dim,) if pythae and isinstance(dim, int) and dim > 0 else None)
        loss = getattr(config, "reconstruction_loss", None)
        reconstruction = {"bce": "bernoulli", "mse": "gaussian"}.get(loss) if pythae else None
        kind = f"pythae {type(obj).__name__}" if pythae else f"{type(obj).__name__} (encoder/decoder)"
        return LatentModelAdapter(encoder, decoder, module, kind, decoder_output or ("mean" if pythae else "logits"),
                                  shape, reconstruction)
    raise VaescopeError(f"{type(obj).__name__} is not a VAE vaescope can read; it accepts {ACCEPTED}")


def fold(values: np.ndarray, latent_shape: tuple[int, ...] | None) -> np.ndarray:
    """Per-variable values ``(..., D)`` back to the encoder's layout ``(..., *latent_shape)``."""
    values = np.asarray(values)
    if not latent_shape:
        return values
    return values.reshape(*values.shape[:-1], *latent_shape)


def variable_position(index: int, latent_shape: tuple[int, ...] | None) -> str:
    """The flat index ``index`` as its position in ``latent_shape``, e.g. "2,3,4" (or "7" when flat)."""
    if not latent_shape or len(latent_shape) == 1:
        return str(index)
    return ",".join(str(int(i)) for i in np.unravel_index(index, latent_shape))
