"""The scale benchmark, run at a tiny size (never timed here): the pass streams, its peak memory is read
from the kernel, and the control that holds the whole data first shows the probe sees such a read."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vaescope.bench.scale import scale_statistics, stream
from vaescope.cli import main


def test_the_stream_hands_out_n_rows_in_batches():
    sizes = [len(b) for b in stream(10, 3, 4)]
    assert sizes == [4, 4, 2]


def test_a_streamed_pass_holds_a_batch_and_the_control_holds_the_data():
    # 60,000 x 400 float32 = 91.6 MiB of data; batches of 1,000 rows = 1.5 MiB each
    streamed = scale_statistics(n=60_000, dim=400, batch_size=1_000, hidden=(32,), threads=1)
    naive = scale_statistics(n=60_000, dim=400, batch_size=1_000, hidden=(32,), threads=1, naive=True)
    assert streamed.data_mib == pytest.approx(60_000 * 400 * 4 / 2**20)
    assert naive.peak_mib > 0.9 * naive.data_mib       # the probe sees a whole-data read ...
    assert streamed.peak_mib < 0.25 * streamed.data_mib  # ... and the stream holds a few batches only
    assert "60,000 x 400 float32" in streamed.text() and "streamed" in streamed.text()


def test_bench_scale_from_the_command_line_at_a_tiny_size():
    result = CliRunner().invoke(main, ["bench", "--scale", "--scale-n", "5000", "--scale-dim", "50", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["scale"]["n"] == 5000 and payload["scale"]["dim"] == 50 and payload["scale"]["naive"] is False
    assert "provenance" in payload


def test_bench_bound_from_the_command_line_on_a_few_digits():
    result = CliRunner().invoke(main, ["bench", "--bound", "3", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)["bound"]
    assert payload["n"] == 3 and payload["k"] == 1000 and payload["threads"] == 1
