"""The performance page quotes one run of `vaescope bench`: its tables are rendered here from the
kept docs/data/bench.json and must stand in docs/performance.md as they are (the words are data)."""

import json
from pathlib import Path

from vaescope.bench.suite import check_targets

ROOT = Path(__file__).resolve().parents[1]


def bench_rows(result: dict) -> list[str]:
    """The page's rows of one bench run, formatted from its JSON."""
    d, c, s = result["dense16"], result["conv16"], result["stats"]
    multi, whole = result["multi_model"], result["whole_process"]
    apart = multi["apart_seconds_per_model_epoch"]
    threads, processes = (multi[f"together_{k}_seconds_per_model_epoch"] for k in ("threads", "processes"))
    return [
        f"| dense16 epoch | {d['vaescope_epoch_s']:.2f} s | {d['reference_epoch_s']:.2f} s | - | {d['pythae_epoch_s']:.2f} s "
        f"| {d['speedup_vs_reference']:.2f}x vs loop, {d['speedup_vs_pythae']:.2f}x vs pythae | {d['gflops']:.0f} "
        f"| {d['fraction_of_matmul_peak']:.0%} |",
        f"| conv16 epoch | {c['vaescope_epoch_s']:.2f} s | {c['reference_epoch_s']:.2f} s "
        f"| {c['reference_channels_last_epoch_s']:.2f} s | - | {c['speedup_vs_reference']:.2f}x vs the faster loop "
        f"| {c['gflops']:.0f} | {c['fraction_of_matmul_peak']:.0%} |",
        f"| statistics pass, 60k | {s['seconds']:.2f} s | | | | | {s['gflops']:.0f} | {s['fraction_of_matmul_peak']:.0%} |",
        f"| float32 matmul 4096^3 (yardstick) | | | | | | {result['matmul_peak_gflops']:.0f} | 100% |",
        f"| whole process, `vaescope train --preset dense16 --epochs 3` | {whole['vaescope_s']:.1f} s | | "
        f"| {whole['pythae_s']:.1f} s | {whole['ratio_to_pythae']:.2f} of pythae's time | | |",
        f"| {multi['models']} dense16 models, {multi['epochs']} epochs each | {threads:.2f} s (threads) "
        f"| {processes:.2f} s (processes) | {apart:.2f} s | {apart / threads:.2f}x | {apart / processes:.2f}x |",
    ]


def target_rows(result: dict) -> list[str]:
    rows = []
    for t in check_targets(result):
        verdict = "reached" if t["reached"] else f"missed, {t['factor_short']:.2f}x short"
        rows.append(f"| {t['target']} | {t['wanted']} | {t['measured']:.2f} | {verdict} |")
    return rows


def test_the_performance_page_quotes_its_bench_run_as_measured() -> None:
    result = json.loads((ROOT / "docs" / "data" / "bench.json").read_text())
    page = (ROOT / "docs" / "performance.md").read_text()
    lines = page.splitlines()
    for row in bench_rows(result) + target_rows(result):
        assert row in lines, row  # a whole line of one of the page's tables
    where = result["provenance"]
    assert f"commit {where['commit']}" in page and f"`{where['command']}`" in page
