"""The tables of docs/results/oracle.md and docs/results/dimension.md are the measurements in
docs/results/data/known-answers.json (collected from the inspect.json, sweep.json and
`vaescope dimension --json` files of the commands the pages give): each table is rendered here from
that file and must appear in its page exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = json.loads((ROOT / "docs" / "results" / "data" / "known-answers.json").read_text())


def epochs_table(data: dict) -> str:
    lines = ["| epochs | Var(mu) | mean sigma^2 | KL (nats) | I(x; z_j) (nats) | IWAE K=100 vs exact (nats) | "
             "W W^T | inactive (measured / closed form) | passes |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for epochs, row in data["oracle_epochs"].items():
        dev = row["max_deviation"]
        lines.append(f"| {epochs} | {dev['mu_variance']:.3f} | {dev['sigma2_mean']:.3f} | {dev['kl']:.3f} | "
                     f"{dev['mutual_information']:.3f} | {row['bound_deviation']:.4f} | {row['decoder_gram_deviation']:.3f} | "
                     f"{row['measured_inactive']} / {row['predicted_inactive']} | {'yes' if row['passed'] else 'no'} |")
    return "\n".join(lines)


def beta_counts_table(reading: dict, predicted: bool = True) -> str:
    head = "| beta | active per seed | predicted (closed form) |" if predicted else "| beta | active per seed |"
    lines = [head, "| --- | --- | --- |" if predicted else "| --- | --- |"]
    for beta, counts in reading["active"].items():
        cells = f"| {beta} | {', '.join(map(str, counts))} |"
        lines.append(cells + (f" {reading['predicted_active'][beta]} |" if predicted else ""))
    return "\n".join(lines)


def thresholds_table(reading: dict) -> str:
    lines = ["| variable | lambda_j | predicted beta_j | measured: collapses in | agrees |", "| --- | --- | --- | --- | --- |"]
    for t in reading["thresholds"]:
        low = "0" if t["low"] is None else f"{t['low']:g}"
        high = "never" if t["high"] is None else f"{t['high']:g}"
        lines.append(f"| {t['index']} | {t['eigenvalue']:.3f} | {t['predicted']:.2f} | ({low}, {high}] | "
                     f"{'yes' if t['agrees'] else 'no'} |")
    return "\n".join(lines)


def dimension_table(data: dict) -> str:
    lines = ["| data | K | active (of 16) | data: TwoNN | MLE k=5 / 10 / 20 | active means: TwoNN | MLE k=5 / 10 / 20 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, d in data["dimension"].items():
        if key == "mnist-5000":
            continue
        name, k = (f"synthetic:factors={key[1:]}", key[1:]) if key.startswith("k") else ("mnist", "-")
        mle = " / ".join(f"{v:.2f}" for v in d["data"]["mle"].values())
        codes = d["codes"]
        cmle = " / ".join(f"{v:.2f}" for v in codes["mle"].values()) if codes else "-"
        lines.append(f"| {name} | {k} | {d['active']} | {d['data']['twonn']:.2f} | {mle} | "
                     f"{codes['twonn']:.2f} | {cmle} |" if codes else f"| {name} | {k} | {d['active']} | - | - | - | - |")
    return "\n".join(lines)


def page(name: str) -> str:
    return (ROOT / "docs" / "results" / name).read_text()


def test_the_oracle_page_shows_the_measured_epochs_and_thresholds():
    text = page("oracle.md")
    assert epochs_table(DATA) in text
    assert beta_counts_table(DATA["linear_beta"]["beta"][0]) in text
    assert thresholds_table(DATA["linear_beta"]["beta"][0]) in text
    assert DATA["oracle_epochs"]["40"]["provenance"]["commit"].removesuffix("-dirty") in text
    assert DATA["linear_beta"]["seconds"] == 49.5 and "took 49.5 s" in text
    if DATA["mnist_beta"] is not None:
        assert beta_counts_table(DATA["mnist_beta"]["beta"][0], predicted=False) in text
        assert f"took {DATA['mnist_beta']['seconds']} s" in text and DATA["mnist_beta"]["epochs"] == 5


def test_the_dimension_page_shows_the_measured_estimates():
    text = page("dimension.md")
    assert dimension_table(DATA) in text
    full = DATA["dimension"]["mnist-5000"]["data"]
    assert f"TwoNN {full['twonn']:.2f}" in text
    assert "MLE " + ", ".join(f"{v:.2f}" for v in full["mle"].values()) in text


if __name__ == "__main__":  # print the tables for the pages
    print(epochs_table(DATA), beta_counts_table(DATA["linear_beta"]["beta"][0]), thresholds_table(DATA["linear_beta"]["beta"][0]),
          DATA["mnist_beta"] and beta_counts_table(DATA["mnist_beta"]["beta"][0], predicted=False), dimension_table(DATA), sep="\n\n")
    pytest.main([__file__])
