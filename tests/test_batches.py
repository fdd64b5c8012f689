"""vaescope.data.batches: every source gives back exactly its rows, with the documented dtype rules, and bad input
is one line naming the object and the option that fixes it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vaescope.data.batches import count_rows, first_batch, iter_batches, take
from vaescope.core.errors import VaescopeError
from vaescope.data.batches import as_float

SRC = Path(__file__).resolve().parents[1] / "src" / "vaescope"


def images(n: int = 10) -> np.ndarray:
    return np.arange(n * 16, dtype=np.int64).reshape(n, 1, 4, 4).astype(np.uint8)  # values 0..159, distinct


def cat(data, **kwargs) -> torch.Tensor:
    return torch.cat(list(iter_batches(data, **kwargs)))


def one_line_error(excinfo: pytest.ExceptionInfo, *words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


# ---------------------------------------------------------------------------- arrays and tensors

def test_uint8_array_is_scaled_exactly_as_vaescope_does_today():
    x = images(10)
    batches = list(iter_batches(x, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    out = torch.cat(batches)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.from_numpy(x).float() / 255.0)  # value / 255
    assert torch.equal(out, as_float(torch.from_numpy(x)))        # the existing rule, bit for bit
    assert float(out.max()) == float(np.float32(159) / np.float32(255)) and float(out.min()) == 0.0


def test_floats_are_kept_as_they_are_and_dtype_casts_floats_only():
    x32 = np.linspace(-3, 3, 40, dtype=np.float32).reshape(10, 4)
    assert torch.equal(cat(x32, batch_size=4), torch.from_numpy(x32))
    x64 = x32.astype(np.float64)
    out64 = cat(x64, batch_size=4)
    assert out64.dtype == torch.float64 and torch.equal(out64, torch.from_numpy(x64))
    assert cat(x64, batch_size=4, dtype=torch.float32).dtype == torch.float32
    tokens = np.arange(30).reshape(10, 3)
    assert cat(tokens, dtype=torch.float32).dtype == torch.int64  # integers are never cast


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint16])
def test_integer_ids_and_counts_stay_integers_unscaled(dtype):
    x = (np.arange(24).reshape(8, 3) * 7).astype(dtype)  # includes values > 1 and > 255 scaled would show
    out = cat(x, batch_size=3)
    assert out.dtype == torch.from_numpy(x).dtype
    assert torch.equal(out, torch.from_numpy(x))


def test_bool_becomes_float_zero_one():
    x = np.array([[True, False], [False, True], [True, True]])
    out = cat(x, batch_size=2)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))


def test_tensor_source_and_slices_are_views_not_copies():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    batches = list(iter_batches(x, batch_size=4))
    assert torch.equal(torch.cat(batches), x)
    # each batch is a view of the source (no copy of the whole tensor, nor of a batch)
    assert [b.data_ptr() for b in batches] == [x[i].data_ptr() for i in (0, 4, 8)]
    arr = x.numpy().copy()
    shared = [np.shares_memory(b.numpy(), arr) for b in iter_batches(arr, batch_size=4)]
    assert shared == [True, True, True]
    # control: the share test can fail (a read-only array is copied slice by slice)
    arr.setflags(write=False)
    copied = [np.shares_memory(b.numpy(), arr) for b in iter_batches(arr, batch_size=4)]
    assert copied == [False, False, False]


def test_read_only_memmap_is_read_by_slices_without_warning(tmp_path):
    x = images(7)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")  # read-only: torch.from_numpy would warn (an error here)
    assert torch.equal(cat(mapped, batch_size=2), as_float(torch.from_numpy(x)))


def test_device_moves_batches():
    out = first_batch(images(4), batch_size=2, device="cpu")
    assert out.device == torch.device("cpu") and out.shape == (2, 1, 4, 4)


# ---------------------------------------------------------------------------- loaders and batch shapes

def test_dataloader_of_one_tensor_yields_one_element_lists():
    x = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    loader = DataLoader(TensorDataset(x), batch_size=4)
    assert isinstance(next(iter(loader)), list) and len(next(iter(loader))) == 1  # what the rule must handle
    assert torch.equal(cat(loader), x)


def test_dataloader_of_inputs_and_labels_takes_the_first_or_batch_key():
    x = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    y = torch.arange(10) * 3
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    assert torch.equal(cat(loader), x)
    assert torch.equal(cat(loader, batch_key=1), y)
    assert cat(loader, batch_key=1).dtype == torch.int64


def test_list_of_dicts_with_batch_key_and_the_single_tensor_rule():
    xs = [torch.full((2, 3), float(i)) for i in range(3)]
    batches = [{"x": x, "y": torch.zeros(2)} for x in xs]
    assert torch.equal(cat(batches, batch_key="x"), torch.cat(xs))
    single = [{"pixels": x, "name": "abc", "index": i} for i, x in enumerate(xs)]  # one tensor value
    assert torch.equal(cat(single), torch.cat(xs))


def test_dict_of_arrays_is_sliced_like_an_array():
    x = images(5)
    out = list(iter_batches({"x": x, "y": np.arange(5)}, batch_key="x", batch_size=2))
    assert [len(b) for b in out] == [2, 2, 1]
    assert torch.equal(torch.cat(out), as_float(torch.from_numpy(x)))


def test_input_fn_reads_any_batch_object_and_array_slices():
    class Graph:
        def __init__(self, nodes: torch.Tensor) -> None:
            self.nodes = nodes

    parts = [torch.randn(3, 2, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    assert torch.equal(cat([Graph(p) for p in parts], input_fn=lambda g: g.nodes), torch.cat(parts))
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    seen: list[int] = []
    out = cat(x, batch_size=4, input_fn=lambda b: (seen.append(len(b)), torch.as_tensor(b) * 2)[1])
    assert seen == [4, 2] and torch.equal(out, torch.from_numpy(x) * 2)


def test_empty_batches_are_skipped():
    parts = [torch.ones(2, 3), torch.ones(0, 3), torch.zeros(1, 3)]
    assert [len(b) for b in iter_batches(parts)] == [2, 1]


# ---------------------------------------------------------------------------- limit, count, first, take

def test_limit_cuts_the_last_batch_and_stops_reading():
    x = images(10)
    out = list(iter_batches(x, batch_size=3, limit=7))
    assert [len(b) for b in out] == [3, 3, 1]
    assert torch.equal(torch.cat(out), as_float(torch.from_numpy(x[:7])))
    assert list(iter_batches(x, limit=0)) == []

    def stream():
        yield torch.ones(4, 2)
        raise AssertionError("read past the limit")

    assert len(torch.cat(list(iter_batches(stream(), limit=3)))) == 3
    assert len(torch.cat(list(iter_batches(stream(), limit=4)))) == 4
    with pytest.raises(AssertionError):  # control: without the limit the stream is read on
        list(iter_batches(stream()))


def test_count_first_and_take():
    x = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    loader = DataLoader(TensorDataset(x), batch_size=4)
    assert count_rows(x) == 10 and count_rows(loader) == 10
    assert count_rows(loader, limit=5) == 5 and count_rows(images(3)) == 3
    assert count_rows({"x": x}, batch_key="x") == 10
    assert torch.equal(first_batch(loader), x[:4])
    assert torch.equal(take(loader, 6), x[:6])
    assert torch.equal(take(loader, None), x)
    assert torch.equal(take(loader, 100), x)  # fewer rows than asked: all of them
    assert torch.equal(take(images(5), 3), as_float(torch.from_numpy(images(5)[:3])))


# ---------------------------------------------------------------------------- bad input

def test_data_that_is_a_string():
    with pytest.raises(VaescopeError) as excinfo:
        list(iter_batches("mnist.npz"))
    one_line_error(excinfo, "data is a str", "input_fn=")


def test_batch_that_is_a_string():
    with pytest.raises(VaescopeError) as excinfo:
        list(iter_batches(["not a batch"]))
    one_line_error(excinfo, "batch 0 of the list", "str", "input_fn=")


def test_dict_batch_with_several_tensors_needs_batch_key():
    batches = [{"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5)}]
    with pytest.raises(VaescopeError) as excinfo:
        list(iter_batches(batches))
    one_line_error(excinfo, "'input_ids'", "'attention_mask'", "batch_key=")
    assert cat(batches, batch_key="input_ids").dtype == torch.long  # control: the fix works
    with pytest.raises(VaescopeError) as excinfo:
        list(iter_batches(batches, batch_key="pixels"))
    one_line_error(excinfo, "no key 'pixels'", "batch_key=")


def test_tuple_whose_first_element_is_not_a_tensor():
    batches = [("label", torch.zeros(2, 3))]
    with pytest.raises(VaescopeError) as excinfo:
        list(iter_batches(batches))
    one_line_error(excinfo, "element 0 is a str", "batch_key=", "input_fn=")
    assert torch.equal(cat(batches, batch_key=1), torch.zeros(2, 3))  # control: the fix works


def test_inconsistent_trailing_shapes_and_dtypes():
    with pytest.raises(VaescopeError) as excinfo:
        list(iter_batches([torch.zeros(2, 3), torch.zeros(2, 4)]))
    one_line_error(excinfo, "batch 1", "(B, 4)", "(B, 3)", "input_fn=")
    # uint8 then float32 would be scaled in one batch and not the other
    with pytest.raises(VaescopeError) as excinfo:
        list(iter_batches([torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(2, 3)]))
    one_line_error(excinfo, "torch.float32", "torch.uint8", "input_fn=")


def test_other_bad_inputs():
    cases = [
        (lambda: list(iter_batches(torch.tensor(3.0))), ("single number",)),
        (lambda: list(iter_batches([torch.zeros(2)], batch_key="x", input_fn=lambda b: b)), ("batch_key=", "input_fn=")),
        (lambda: list(iter_batches([torch.zeros(2)], input_fn=lambda b: [1, 2])), ("input_fn returned a list",)),
        (lambda: list(iter_batches(np.array([{"a": 1}], dtype=object))), ("expected numbers", "input_fn=")),
        (lambda: list(iter_batches(42)), ("not iterable",)),
        (lambda: list(iter_batches([torch.zeros(2)], batch_key="x")), ("no element 'x'", "batch_key=")),
        (lambda: list(iter_batches({"x": np.zeros(3)}, input_fn=lambda b: b)), ("input_fn=", "batch_key=")),
        (lambda: list(iter_batches(np.zeros(3), batch_size=0)), ("batch_size=",)),
        (lambda: list(iter_batches(np.zeros(3), limit=-1)), ("limit=",)),
        (lambda: first_batch([]), ("no rows",)),
        (lambda: take(np.zeros((0, 2)), 3), ("no rows",)),
    ]
    for call, words in cases:
        with pytest.raises(VaescopeError) as excinfo:
            call()
        one_line_error(excinfo, *words)


# ---------------------------------------------------------------------------- layering
