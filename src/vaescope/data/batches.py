"""Data of any shape, from anywhere, as a stream of ``(B, ...)`` tensors for the model's encoder.

:func:`iter_batches` is the one way an analysis reads data. It accepts:

- a NumPy array or a tensor ``(N, ...)``: sliced ``batch_size`` rows at a time; each slice alone is
  converted and moved to ``device`` (the whole array is never copied to the device, and a
  ``np.memmap`` is read slice by slice);
- a dict (any ``Mapping``) of arrays/tensors ``(N, ...)``: one of them, chosen as for a dict batch
  below, is sliced as above;
- any other iterable of batches (a ``torch.utils.data.DataLoader``, a list, a generator), each
  batch being

  - a tensor or a NumPy array ``(B, ...)``: taken as it is;
  - a tuple or list (what ``DataLoader(TensorDataset(x, y))`` yields; ``TensorDataset(x)``
    yields 1-element lists): element ``batch_key`` (an int), by default element 0;
  - a dict (any ``Mapping``: a Hugging Face ``BatchEncoding``, pythae's ``DatasetOutput``):
    value ``batch_key``; without ``batch_key`` the one value that is an array/tensor, and an
    error when there are several (``{"input_ids", "attention_mask"}`` must say which);
  - anything else (a graph batch, a dataclass): through the user's ``input_fn(batch) -> tensor``.

  ``input_fn``, when given, is applied to every batch *instead* of the rules above (it receives the
  batch as the loader yields it). Batches from an iterable are passed on at the size they come in
  (``batch_size`` applies to arrays only).

**Dtypes** (what the model receives):

- ``uint8`` is image bytes: scaled to float32 in [0, 1], value / 255, exactly as
  ``vaescope.data.batches.as_float`` does (the bytes travel to ``device`` first, 4x less traffic);
- ``bool`` becomes float32 0./1. (binary images, masks);
- floating dtypes are kept as they are (float64 stays float64, bfloat16 stays bfloat16);
- every other integer dtype (int8/16/32/64, uint16/32/64) is kept integer and unscaled: token ids
  ``(N, T)`` and counts ``(N, G)`` must reach a categorical/Poisson/negative-binomial likelihood as
  the integers they are. 16-bit images are therefore *not* scaled: give ``input_fn``;
- ``dtype=``: when given, floating results (including scaled bytes and bools) are cast to it
  (``dtype=torch.float32`` reproduces ``as_float`` for every floating source); integers never are.

Every batch must have the source dtype and the trailing shape ``(...)`` of the first one (else
scaling would differ between batches, and :func:`take` could not concatenate them). Empty batches
are skipped. ``limit`` stops after that many rows, cutting the last batch.

One-shot iterators (generators) are consumed: :func:`first_batch` on a generator takes its first
batch away from a later :func:`iter_batches`. DataLoaders, lists and arrays can be read again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from vaescope.core.errors import VaescopeError

Batch = Any  # what a loader yields: a tensor, an array, a tuple/list, a dict, or anything for input_fn
DataSource = np.ndarray | torch.Tensor | Mapping[Any, Any] | Iterable[Batch]
BatchKey = str | int | None
InputFn = Callable[[Batch], Any]

ACCEPTED_BATCH = ("a tensor or array (B, ...), a tuple/list whose element batch_key (default 0) is one, "
                  "or a dict with one tensor value (else batch_key=)")


def _describe(obj: Any) -> str:
    """A short name of what was seen, for one-line errors."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return f"{type(obj).__name__} {tuple(obj.shape)} {obj.dtype}"
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(type(v).__name__ for v in obj[:4]) + (", ..." if len(obj) > 4 else "")
        return f"a {type(obj).__name__} of {len(obj)} ({inner})"
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with keys {', '.join(map(repr, list(obj)[:8]))}"
    return f"a {type(obj).__name__}"


def _is_array(obj: Any) -> bool:
    return isinstance(obj, (torch.Tensor, np.ndarray))


def _to_tensor(value: Any, where: str) -> torch.Tensor:
    """An array or tensor as a tensor (NumPy memory shared when possible; read-only arrays copied)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USV":
            raise VaescopeError(f"{where} is {_describe(value)}; expected numbers; pass input_fn= to turn "
                                "each batch into a numeric tensor")
        if not value.flags.writeable:  # np.load(mmap_mode="r"): torch would warn; copy this slice only
            value = np.array(value)
        try:
            return torch.from_numpy(np.ascontiguousarray(value))
        except TypeError as err:  # a dtype torch has no counterpart for
            raise VaescopeError(f"{where} has dtype {value.dtype}, which torch cannot hold; pass input_fn= "
                                "to convert each batch") from err
    raise VaescopeError(f"{where} is {_describe(value)}; expected a tensor or a NumPy array; "
                        "pass input_fn= to turn each batch into a tensor")


def _select(batch: Batch, batch_key: BatchKey, where: str) -> Any:
    """The array/tensor inside one batch, by the rules of the module docstring."""
    if _is_array(batch):
        if batch_key is not None:
            raise VaescopeError(f"{where} is {_describe(batch)}, which has no element {batch_key!r}; "
                                "drop batch_key= (it selects inside tuple or dict batches)")
        return batch
    if isinstance(batch, (str, bytes)):
        raise VaescopeError(f"{where} is a {type(batch).__name__} ({batch[:20]!r}); expected {ACCEPTED_BATCH}; "
                            "pass input_fn= to turn each batch into a tensor")
    if isinstance(batch, (tuple, list)):
        index = 0 if batch_key is None else batch_key
        if not isinstance(index, int) or isinstance(index, bool):
            raise VaescopeError(f"{where} is {_describe(batch)}; batch_key={batch_key!r} must be an int "
                                "index for tuple/list batches (or pass input_fn=)")
        if not -len(batch) <= index < len(batch):
            raise VaescopeError(f"{where} is {_describe(batch)}; it has no element {index}; "
                                "pass batch_key= with an index below its length, or input_fn=")
        value = batch[index]
        if not _is_array(value):
            raise VaescopeError(f"{where} is {_describe(batch)} whose element {index} is a {type(value).__name__}, "
                                "not a tensor; pass batch_key= (its index) or input_fn=")
        return value
    if isinstance(batch, Mapping):
        if batch_key is not None:
            if batch_key not in batch:
                raise VaescopeError(f"{where} is {_describe(batch)}; it has no key {batch_key!r}; "
                                    "pass batch_key= with one of its keys")
            value = batch[batch_key]
            if not _is_array(value):
                raise VaescopeError(f"{where}[{batch_key!r}] is a {type(value).__name__}, not a tensor; "
                                    "pass batch_key= naming a tensor, or input_fn=")
            return value
        tensors = [k for k, v in batch.items() if _is_array(v)]
        if len(tensors) == 1:
            return batch[tensors[0]]
        found = (f"tensors under {', '.join(map(repr, tensors))}" if tensors else "no tensor")
        raise VaescopeError(f"{where} is {_describe(batch)} holding {found}; pass batch_key= naming the model's "
                            "input (or input_fn=)")
    raise VaescopeError(f"{where} is {_describe(batch)}; expected {ACCEPTED_BATCH}; "
                        "pass input_fn= to turn each batch into a tensor")


def _convert(batch: torch.Tensor, device: torch.device | None, dtype: torch.dtype | None) -> torch.Tensor:
    """Device first (uint8 travels as bytes), then the dtype rules of the module docstring."""
    if device is not None:
        batch = batch.to(device, non_blocking=True)
    if batch.dtype == torch.uint8:
        batch = batch.float().div_(255.0)
    elif batch.dtype == torch.bool:
        batch = batch.float()
    if dtype is not None and batch.is_floating_point():
        batch = batch.to(dtype)
    return batch


def _raw_batches(data: DataSource, batch_size: int, batch_key: BatchKey,
                 input_fn: InputFn | None) -> Iterator[tuple[torch.Tensor, str]]:
    """(tensor as the source holds it, name for errors), before checks, dtype conversion and limit."""
    if isinstance(data, (str, bytes)):
        raise VaescopeError(f"data is a {type(data).__name__} ({data[:20]!r}); expected an array, a tensor or an "
                            "iterable of batches (a DataLoader); load the file first, or pass input_fn=")
    if isinstance(data, Mapping):
        if input_fn is not None:
            raise VaescopeError(f"data is {_describe(data)} and input_fn= is given; input_fn applies to the "
                                "batches of an iterable: pass the array itself, or batch_key= instead")
        data = _select(data, batch_key, "data")
        batch_key = None
    if _is_array(data) and data.ndim == 0:
        raise VaescopeError(f"data is {_describe(data)}, a single number; expected (N, ...) with one row "
                            "per example")
    if _is_array(data) and input_fn is None:
        for start in range(0, len(data), batch_size):
            yield _to_tensor(data[start : start + batch_size], f"rows {start}: of data"), "data"
        return
    if _is_array(data):  # input_fn on an array: rows in batches, then the user's function
        array = data
        data = [array[start : start + batch_size] for start in range(0, len(array), batch_size)]  # views
    if not isinstance(data, Iterable):
        raise VaescopeError(f"data is {_describe(data)}, which is not iterable; expected an array, a tensor or an "
                            "iterable of batches (a DataLoader)")
    name = type(data).__name__
    for i, batch in enumerate(data):
        where = f"batch {i} of the {name}"
        if input_fn is not None:
            value = input_fn(batch)
            if not _is_array(value):
                raise VaescopeError(f"input_fn returned {_describe(value)} for {where}; "
                                    "input_fn= must return a tensor (B, ...)")
            where = f"input_fn's result for {where}"
        else:
            value = _select(batch, batch_key, where)
        yield _to_tensor(value, where), where


def _checked_batches(data: DataSource, batch_size: int, batch_key: BatchKey,
                     input_fn: InputFn | None) -> Iterator[torch.Tensor]:
    """Non-empty source tensors ``(B, ...)``, each of the first one's dtype and trailing shape."""
    if batch_size < 1:
        raise VaescopeError(f"batch_size is {batch_size}; pass batch_size= of at least 1")
    if input_fn is not None and batch_key is not None:
        raise VaescopeError("iter_batches got both batch_key= and input_fn=; input_fn receives the whole batch, "
                            "so pass one or the other")
    if input_fn is not None and not callable(input_fn):
        raise VaescopeError(f"input_fn is a {type(input_fn).__name__}; pass input_fn= a function batch -> tensor")
    first: tuple[torch.dtype, tuple[int, ...], str] | None = None
    for raw, where in _raw_batches(data, batch_size, batch_key, input_fn):
        if raw.ndim == 0:
            raise VaescopeError(f"{where} is a single number (shape ()); expected (B, ...) with one row per example; "
                                "pass input_fn= to shape each batch")
        if first is None:
            first = (raw.dtype, tuple(raw.shape[1:]), where)
        elif (raw.dtype, tuple(raw.shape[1:])) != first[:2]:
            raise VaescopeError(
                f"{where} is (B, {', '.join(map(str, raw.shape[1:]))}) {raw.dtype} but {first[2]} was "
                f"(B, {', '.join(map(str, first[1]))}) {first[0]}; every batch must share dtype and trailing shape: "
                "pass input_fn= to pad/crop/cast each batch")
        if len(raw):
            yield raw


def iter_batches(data: DataSource, *, batch_size: int = 2000, batch_key: BatchKey = None,
                 input_fn: InputFn | None = None, device: str | torch.device | None = None,
                 limit: int | None = None, dtype: torch.dtype | None = None) -> Iterator[torch.Tensor]:
    """Batches ``(B, ...)`` of ``data`` on ``device``, converted by the module docstring's dtype rules.

    ``data``: an array/tensor ``(N, ...)``, a dict of them, or an iterable of batches (see the module
    docstring). ``batch_size``: rows per slice of an array (iterables keep their own batches).
    ``batch_key``: an int index into tuple/list batches, or a key into dict batches. ``input_fn``:
    ``batch -> tensor (B, ...)``, used instead of the selection rules (not with ``batch_key``).
    ``device``: where batches go (default: where they are). ``limit``: at most this many rows in all.
    ``dtype``: the floating dtype to cast floating batches to (integers are never cast).
    Errors are raised when the offending batch is reached (the function is a generator).
    """
    if limit is not None and limit < 0:
        raise VaescopeError(f"limit is {limit}; pass limit= of at least 0 (or None for all rows)")
    device = torch.device(device) if device is not None else None
    remaining = limit
    if remaining == 0:
        return
    for raw in _checked_batches(data, batch_size, batch_key, input_fn):
        if remaining is not None and len(raw) > remaining:
            raw = raw[:remaining]
        yield _convert(raw, device, dtype)
        if remaining is not None:
            remaining -= len(raw)
            if remaining == 0:
                return


def count_rows(data: DataSource, *, batch_size: int = 2000, batch_key: BatchKey = None,
               input_fn: InputFn | None = None, limit: int | None = None) -> int:
    """How many rows :func:`iter_batches` would yield (at most ``limit``).

    Arrays, tensors and dicts of them (without ``input_fn``): their length, nothing read. Iterables:
    a pass over the batches, each selected and checked as :func:`iter_batches` does but neither
    converted nor moved, stopping once ``limit`` is reached (so a generator is consumed).
    """
    if limit is not None and limit < 0:
        raise VaescopeError(f"limit is {limit}; pass limit= of at least 0 (or None for all rows)")
    source = _select(data, batch_key, "data") if isinstance(data, Mapping) and input_fn is None else data
    if _is_array(source) and source.ndim > 0 and input_fn is None:
        n = len(source)
    else:
        n = 0
        for raw in _checked_batches(data, batch_size, batch_key, input_fn):
            n += len(raw)
            if limit is not None and n >= limit:
                break
    return n if limit is None else min(n, limit)


def first_batch(data: DataSource, *, batch_size: int = 2000, batch_key: BatchKey = None,
                input_fn: InputFn | None = None, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """The first batch :func:`iter_batches` yields ``(B, ...)``: for shape and dtype inspection."""
    for batch in iter_batches(data, batch_size=batch_size, batch_key=batch_key, input_fn=input_fn,
                              device=device, dtype=dtype):
        return batch
    raise VaescopeError(f"data ({_describe(data)}) has no rows; expected at least one example")


def take(data: DataSource, n: int | None, *, batch_size: int = 2000, batch_key: BatchKey = None,
         input_fn: InputFn | None = None, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """The first ``n`` rows (all when ``n`` is None; fewer when the data have fewer) as one tensor ``(n, ...)``,
    for measures that need an in-memory sample (the mutual information's mixture, a probe)."""
    if n is not None and n < 1:
        raise VaescopeError(f"take: n is {n}; ask for at least 1 row (or None for all)")
    parts = list(iter_batches(data, batch_size=batch_size, batch_key=batch_key, input_fn=input_fn,
                              device=device, limit=n, dtype=dtype))
    if not parts:
        raise VaescopeError(f"data ({_describe(data)}) has no rows; expected at least one example")
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def images_to_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images as one tensor on ``device``; uint8 stays uint8 (4x less memory) and is scaled per batch."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """A batch as float32 in [0, 1]: uint8 images are value / 255."""
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()

