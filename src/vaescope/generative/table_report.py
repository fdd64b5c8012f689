"""The objectives table from its JSON: rows (means ± spread over seeds), the findings computed from
the numbers, the sentences that state them, and ``objectives.md``.

Everything here reads the ``runs`` of ``objectives.json`` (:func:`vaescope.generative.table.objectives_table`
writes them) and nothing else, so a report can be rebuilt, and checked, from the file alone. The
spread is the sample standard deviation over seeds (none with one seed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vaescope.core.provenance import describe
from vaescope.generative.plan import BALANCED, OBJECTIVES, PLAIN_ELBOS
from vaescope.reports.html import Block, Paragraph, Section, Table, render_markdown

SAMPLER_WORDS = {"prior": "the prior", "gmm": "the Gaussian mixture", "two-stage": "the second stage"}
SCORES = ("frechet_distance", "precision", "recall", "density", "coverage")


# ---------------------------------------------------------------------------- rows

def spread(values: Sequence[float]) -> dict[str, Any] | None:
    """``{"mean", "spread", "values"}``: the spread is the standard deviation (N - 1), None for one value;
    None for no value."""
    if not len(values):
        return None
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "spread": float(array.std(ddof=1)) if len(array) > 1 else None,
            "values": [float(v) for v in array]}


def summarise(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (architecture, objective), in the runs' order: every measure as :func:`spread` over seeds."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["architecture"], run["objective"]), []).append(run)
    rows = []
    for (architecture, objective), members in groups.items():
        first = members[0]
        rows.append({
            "architecture": architecture, "objective": objective, "description": first["description"],
            "likelihood": first["likelihood"], "latent_dim": first["latent_dim"],
            "seeds": [r["seed"] for r in members],
            "active": spread([r["active"] for r in members]),
            "variance_law_max_abs_dev": spread([r["variance_law_max_abs_dev"] for r in members]),
            "decoder_variance": (spread([r["decoder_variance"] for r in members])
                                 if first["decoder_variance"] is not None else None),
            "test_negative_elbo": spread([r["test_negative_elbo"] for r in members]),
            "bound_negative_log_likelihood": spread([r["bound"]["negative_log_likelihood"] for r in members]),
            # a fitted sampler is None in a run with no active variable: the spread is over the others
            "samplers": {kind: {score: spread([r["samplers"][kind][score] for r in members if r["samplers"][kind]])
                                for score in SCORES} for kind in first["samplers"]},
        })
    return rows


# ---------------------------------------------------------------------------- findings

def _row(rows: Sequence[Mapping[str, Any]], architecture: str, objective: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["architecture"] == architecture and r["objective"] == objective), None)


def count_verdict(changed: Sequence[float], plain: Sequence[float]) -> str:
    """"more" when every value of ``changed`` is above every one of ``plain``, "fewer" when below,
    "same" when both hold one and the same value, else "overlapping" (within the seed-to-seed spread)."""
    if min(changed) > max(plain):
        return "more"
    if max(changed) < min(plain):
        return "fewer"
    return "same" if set(changed) == set(plain) and len(set(changed)) == 1 else "overlapping"


def findings(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """What the numbers say, as numbers: balancing's active count against each plain ELBO; each fitted
    sampler's Frechet distance against the prior's on the same runs; the lowest Frechet distance."""
    rows = summarise(runs)
    architectures = list(dict.fromkeys(r["architecture"] for r in rows))
    balancing = []
    for architecture in architectures:
        balanced = _row(rows, architecture, BALANCED)
        for plain_key in PLAIN_ELBOS:
            plain = _row(rows, architecture, plain_key)
            if balanced is None or plain is None:
                continue
            balancing.append({"architecture": architecture, "against": plain_key,
                              "balanced_active": balanced["active"], "plain_active": plain["active"],
                              "latent_dim": balanced["latent_dim"],
                              "verdict": count_verdict(balanced["active"]["values"], plain["active"]["values"])})
    samplers = []
    for architecture in architectures:
        members = [r for r in runs if r["architecture"] == architecture]
        kinds = [k for k in members[0]["samplers"] if k != "prior"] if members else []
        for kind in kinds:
            fitted_runs = [r for r in members if r["samplers"][kind]]  # None: not fitted (no active variable)
            prior = [r["samplers"]["prior"]["frechet_distance"] for r in fitted_runs]
            fitted = [r["samplers"][kind]["frechet_distance"] for r in fitted_runs]
            better = sum(f < p for f, p in zip(fitted, prior))
            n = len(fitted_runs)
            samplers.append({"architecture": architecture, "sampler": kind, "runs": n, "better": better,
                             "unfitted_runs": len(members) - n,
                             "prior_mean": float(np.mean(prior)) if n else None,
                             "sampler_mean": float(np.mean(fitted)) if n else None,
                             "verdict": "unfitted" if n == 0 else "every" if better == n else "none" if better == 0
                             else "some"})
    best = []
    for architecture in architectures:
        cells = [(row["samplers"][kind]["frechet_distance"]["mean"], order, row["objective"], kind)
                 for order, row in enumerate(rows) if row["architecture"] == architecture for kind in row["samplers"]
                 if row["samplers"][kind]["frechet_distance"] is not None]
        _, _, objective, kind = min(cells)  # ties: the first in the table's order
        best.append({"architecture": architecture, "objective": objective, "sampler": kind,
                     "frechet_distance": _row(rows, architecture, objective)["samplers"][kind]["frechet_distance"]})
    return {"balancing": balancing, "samplers": samplers, "best": best}


# ---------------------------------------------------------------------------- words

def cell(value: Mapping[str, Any] | None, digits: int) -> str:
    """``mean ± spread`` with ``digits`` decimals; the mean alone for one seed; "-" for no value."""
    if value is None:
        return "-"
    if value["spread"] is None:
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f} ± {value['spread']:.{digits}f}"


def _seed_range(value: Mapping[str, Any]) -> str:
    low, high = min(value["values"]), max(value["values"])
    return f"{low:g}" if low == high else f"{low:g} to {high:g}"


def balancing_sentence(finding: Mapping[str, Any]) -> str:
    b, p = finding["balanced_active"], finding["plain_active"]
    against = OBJECTIVES[finding["against"]]
    head = f"On {finding['architecture']}, balancing (Asperti & Trentin 2020)"
    counts = f"{cell(b, 2)} active variables of {finding['latent_dim']} against {cell(p, 2)} with the plain {against}"
    verdict = finding["verdict"]
    if verdict == "more":
        return f"{head} raised the active count: {counts}, more in every seed ({_seed_range(b)} against {_seed_range(p)})."
    if verdict == "fewer":
        return f"{head} lowered the active count: {counts}, fewer in every seed ({_seed_range(b)} against {_seed_range(p)})."
    if verdict == "same":
        return f"{head} left the active count as it was: {counts}."
    return (f"{head} did not change the active count beyond the spread over seeds: {counts} (seeds: "
            f"{_seed_range(b)} against {_seed_range(p)}).")


def sampler_sentence(finding: Mapping[str, Any]) -> str:
    name, n, k = SAMPLER_WORDS.get(finding["sampler"], finding["sampler"]), finding["runs"], finding["better"]
    where = f"On {finding['architecture']}, {name}"
    if finding["verdict"] == "unfitted":
        return f"{where} could be fitted in no run (a fitted sampler needs an active variable)."
    means = f"mean Frechet distance {finding['sampler_mean']:.3g} against {finding['prior_mean']:.3g}"
    if finding["unfitted_runs"]:
        means += f"; left out: {finding['unfitted_runs']} runs where it could not be fitted"
    if finding["verdict"] == "every":
        return f"{where} beat the prior on Frechet distance in every run ({k} of {n}; {means})."
    if finding["verdict"] == "none":
        return f"{where} beat the prior on Frechet distance in no run ({k} of {n}; {means})."
    return f"{where} beat the prior on Frechet distance in {k} of {n} runs ({means})."


def best_sentence(finding: Mapping[str, Any]) -> str:
    return (f"The lowest Frechet distance on {finding['architecture']}: {OBJECTIVES[finding['objective']]} with "
            f"{SAMPLER_WORDS.get(finding['sampler'], finding['sampler'])}, {cell(finding['frechet_distance'], 2)}.")


def finding_sentences(found: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The sentences of :func:`findings`, in order: balancing, samplers, the lowest Frechet distance."""
    return ([balancing_sentence(f) for f in found["balancing"]] + [sampler_sentence(f) for f in found["samplers"]]
            + [best_sentence(f) for f in found["best"]])


# ---------------------------------------------------------------------------- tables

def latent_table(results: Mapping[str, Any]) -> Table:
    k, images = results["settings"]["bound_k"], results["settings"]["bound_images"]
    rows = [[r["architecture"], r["description"], str(len(r["seeds"])), cell(r["active"], 2) + f" / {r['latent_dim']}",
             cell(r["variance_law_max_abs_dev"], 3), cell(r["decoder_variance"], 4), r["likelihood"],
             cell(r["test_negative_elbo"], 1), cell(r["bound_negative_log_likelihood"], 1)]
            for r in summarise(results["runs"])]
    return Table(["architecture", "objective", "seeds", "active (Var(mu) >= threshold)", "max abs(Var(mu) + mean sigma^2 - 1)",
                  "decoder variance", "likelihood", "test -ELBO (nats/image)",
                  f"-log p(x) bound, K = {k}, {images} digits (nats/image)"], rows)


def generation_table(results: Mapping[str, Any]) -> Table:
    rows = []
    for r in summarise(results["runs"]):
        for kind, s in r["samplers"].items():
            fitted = len(s["frechet_distance"]["values"]) if s["frechet_distance"] else 0
            rows.append([r["architecture"], r["description"], kind, f"{fitted} of {len(r['seeds'])}",
                         *[cell(s[score], 2 if score == "frechet_distance" else 3) for score in SCORES]])
    return Table(["architecture", "objective", "sampler", "runs scored", "Frechet distance", "precision", "recall",
                  "density", "coverage"], rows,
                 caption="A fitted sampler (gmm, two-stage) needs an active variable: runs with none are not "
                         "scored (each run's `unfitted` in objectives.json says why).")


def markdown_table(table: Table) -> str:
    """A table as Markdown, as ``objectives.md`` shows it (and the docs page, pasted from it)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join(" --- " for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table.rows]
    return (f"*{table.caption}*\n\n" if table.caption else "") + "\n".join(lines)


def markdown_tables(results: Mapping[str, Any]) -> str:
    """The two tables of the measured run, for docs/results/objectives.md."""
    return markdown_table(latent_table(results)) + "\n\n" + markdown_table(generation_table(results))


# ---------------------------------------------------------------------------- the report

def _settings_text(results: Mapping[str, Any]) -> str:
    s, runs = results["settings"], results["runs"]
    gmm, stage = s["sampler"]["gmm"], s["sampler"]["two-stage"]
    epochs = ", ".join(f"{a} {n}" for a, n in dict.fromkeys((r["architecture"], r["epochs"]) for r in runs))
    return (f"{len(runs)} runs on `{s['data_source']}` ({s['mode']} setting): {', '.join(s['architectures'])} x "
            f"{len(OBJECTIVES)} objectives x {s['seeds']} seed{'s' if s['seeds'] != 1 else ''}; epochs: {epochs}. Each run directory lies under "
            f"`runs/`. Active: Var(mu) >= {runs[0]['mu_variance_threshold']:g} over the {runs[0]['statistics_images']} "
            f"test images. The bound: importance-weighted (Burda et al.), K = {s['bound_k']}, on the first "
            f"{s['bound_images']} test images. Generation: {s['samples']} samples of each sampler against the first "
            f"{s['samples']} test images, on the features of a LeNet vaescope trained (SHA-256 "
            f"{results['classifier']['sha256'][:12]}, test accuracy {results['classifier']['test_accuracy']:.4f}); "
            f"precision/recall/density/coverage with k = {s['nearest_k']} (Naeem et al. 2020). The Gaussian "
            f"mixture: {gmm['components']} components on the first {gmm['codes']} training codes; the second stage "
            f"(Dai & Wipf 2019): {stage['epochs']} epochs on {stage['codes']} codes. Means ± standard deviation over "
            f"seeds. Every number is in `objectives.json`.")


def _units_text(results: Mapping[str, Any]) -> str:
    kinds: dict[str, list[str]] = {}
    for row in summarise(results["runs"]):
        kinds.setdefault(row["likelihood"], [])
        if row["description"] not in kinds[row["likelihood"]]:
            kinds[row["likelihood"]].append(row["description"])
    parts = [f"{name} for {', '.join(descriptions)}" for name, descriptions in kinds.items()]
    return ("Units: test -ELBO (the last epoch's test loss of `metrics.csv`, with the constant (P/2) log(pi) a "
            "Gaussian decoder's loss leaves out put back) and the bound are nats per image under each run's own "
            f"decoder likelihood: {'; '.join(parts)}. The Bernoulli on grey levels is a cross-entropy, not a "
            "density of the images, and a Gaussian density over pixels in [0, 1] depends on its variance: numbers "
            "of different likelihoods are not on one scale, so compare them within one likelihood only.")


def _time_text(results: Mapping[str, Any]) -> str:
    stages = results["stages"]
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
    totals = results["totals"]
    return (f"Wall time of this invocation: {parts} ({results['counts']['trained']} runs trained, "
            f"{results['counts']['reused']} reused; {results['counts']['measured']} measured, "
            f"{results['counts']['measures_reused']} measures reused). Summed over the runs as recorded when each "
            f"was made: training {totals['training']:.1f} s, statistics {totals['statistics']:.1f} s, bound "
            f"{totals['bound']:.1f} s, sampler fits {totals['fits']:.1f} s, scoring {totals['scoring']:.1f} s.")


def report_sections(results: Mapping[str, Any]) -> tuple[list[Block], list[Section]]:
    intro: list[Block] = [Paragraph(_settings_text(results))]
    found = results["findings"]
    sections = [
        Section("findings", "What the numbers say", [Paragraph(" ".join(finding_sentences(found)))]),
        Section("latent", "Latent space and likelihood", [Paragraph(_units_text(results)), latent_table(results)]),
        Section("generation", "Generation: Frechet distance, precision, recall, density, coverage",
                [generation_table(results)]),
        Section("time", "Time", [Paragraph(_time_text(results)),
                                 Paragraph(f"Measured with {describe(results['provenance'])}.")]),
    ]
    return intro, sections


def render_report(results: Mapping[str, Any]) -> str:
    """``objectives.md`` from the table's JSON."""
    intro, sections = report_sections(results)
    return render_markdown("vaescope objectives: objectives x samplers", sections, intro)
