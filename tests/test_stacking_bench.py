"""The stacked-models benchmark (``vaescope bench --stacking``): its knee rule with known answers,
and the benchmark itself run on the CPU with tiny data (the CUDA path runs the same code)."""

import numpy as np
import torch
import pytest

from vaescope.bench import suite
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


def test_the_bench_says_when_no_gpu_was_measured(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # whatever machine runs the tests
    row = suite.extra_rows()["gpu_stacking"]
    assert row["measured"] is False and row["reason"].startswith("no CUDA device on this machine")
    text = suite.format_report({**_rows(), "gpu_stacking": row})
    assert "GPU stacking: not measured (no CUDA device on this machine" in text


def test_the_bench_report_reads_a_measured_gpu_row() -> None:
    gpu = {"measured": True, "device_name": "Some GPU", "single_epoch_s": 0.5, "knee": 2,
           "stacked": [{"models": 1, "epoch_s": 0.5, "model_epochs_per_s": 2.0, "speedup": 1.0},
                       {"models": 2, "epoch_s": 0.5, "model_epochs_per_s": 4.0, "speedup": 2.0}]}
    text = suite.format_report({**_rows(), "gpu_stacking": gpu})
    assert ("GPU stacking on Some GPU: one dense16 model 0.50 s an epoch; 1 stacked 2.00 model-epochs/s (1.0x), "
            "2 stacked 4.00 model-epochs/s (2.0x); throughput grows up to 2 models") in text


def _rows() -> dict:
    row = {"vaescope_epoch_s": 1.0, "reference_epoch_s": 1.2, "reference_channels_last_epoch_s": None,
           "pythae_epoch_s": None, "speedup_vs_reference": 1.2, "speedup_vs_pythae": None, "gflops": 50.0,
           "fraction_of_matmul_peak": 0.45}
    return {"dense16": row, "conv16": row, "stats": {"seconds": 0.2, "gflops": 100.0, "fraction_of_matmul_peak": 0.75},
            "matmul_peak_gflops": 180.0}
