"""The stacked-models benchmark (``vaescope bench --stacking``): its knee rule with known answers,
and the benchmark itself run on the CPU with tiny data (the CUDA path runs the same code)."""

import numpy as np
import pytest

from vaescope.bench.stacking import knee, stacking_benchmark
from vaescope.core.config import resolve
from vaescope.core.errors import VaescopeError
from vaescope.data.dataset import Dataset


def test_knee_is_the_last_count_that_still_grew() -> None:
    counts = [1, 2, 4, 8, 16]
    # doubling helps up to 8 (x1.9, x1.8, x1.5), then 16 only adds 5%
    assert knee(counts, [10.0, 19.0, 34.0, 51.0, 53.5]) == 8
    # nothing grows: one model is as good as it gets
    assert knee(counts, [10.0, 10.5, 10.2, 9.0, 8.0]) == 1
    # a dip then a real gain counts against the best so far, not the previous point
    assert knee(counts, [10.0, 8.0, 10.5, 12.0, 12.5]) == 8
    # the growth threshold is a parameter
    assert knee([1, 2], [10.0, 10.5], growth=1.04) == 2


def test_knee_refuses_mismatched_lists() -> None:
    with pytest.raises(VaescopeError, match="2 counts and 1 throughputs"):
        knee([1, 2], [3.0])


def _tiny() -> Dataset:
    rng = np.random.default_rng(0)
    x = (rng.random((256, 1, 28, 28)) * 255).astype(np.uint8)
    return Dataset("tiny", x, None, x[:64], None)


def test_stacking_benchmark_on_the_cpu_reports_every_count() -> None:
    config = resolve("dense16", overrides=["train.batch_size=64"])
    result = stacking_benchmark("cpu", dataset=_tiny(), counts=(1, 2, 3), rounds=1, config=config)
    assert result["device"] == "cpu" and result["n_train"] == 256
    assert [row["models"] for row in result["stacked"]] == [1, 2, 3]
    assert result["rounds"] == 1 and result["device_name"] == "cpu"
    assert set(result["stacked"][0]) == {"models", "epoch_s", "model_epochs_per_s", "speedup"}


def test_stacking_benchmark_refuses_bad_counts() -> None:
    with pytest.raises(VaescopeError, match="ascending model counts"):
        stacking_benchmark("cpu", dataset=_tiny(), counts=(4, 2))

