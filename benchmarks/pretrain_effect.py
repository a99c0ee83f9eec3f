"""Pre-training's effect on 5-fold macro-F1, paired by fold and seed, from annotation_cv.py's results.

Reads the pairs of runs ``cv_<dataset>_<without>[_seed<N>]_folds0-1-2-3-4.json`` and
``cv_<dataset>_<with>[_seed<N>]_folds0-1-2-3-4.json`` under ``--results`` (seed 0 has no
``_seed`` part), pairs each fold of each seed, and reports, per dataset and method, the
mean difference (with - without), how many pairs went up and down, and the two-sided
paired t-test's p over all pairs. Writes ``pretrain_effect_<without>_vs_<with>.json``
beside the results.

    .venv/bin/python benchmarks/pretrain_effect.py
    .venv/bin/python benchmarks/pretrain_effect.py --without transductive-no-pretrain \
        --with transductive-pretrain2000
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from scipy import stats

METHODS = ("scrobust", "scrobust_network_only")


def fold_scores(result: dict, method: str) -> dict[int, float]:
    """``{fold: macro-F1}`` of ``method`` in one annotation_cv.py result."""
    return {row["fold"]: row["f1_macro"] for row in result["rows"] if row["method"] == method}


def paired_effect(pairs: list[tuple[float, float]]) -> dict:
    """Mean difference, ups and downs and paired t-test p of ``(without, with)`` pairs.

    Examples
    --------
    >>> paired_effect([(0.8, 0.9), (0.7, 0.7), (0.9, 0.85)])["up"]
    1
    """
    without, with_ = (np.array(x, dtype=float) for x in zip(*pairs, strict=True))
    diff = with_ - without
    p = float(stats.ttest_rel(with_, without).pvalue) if len(diff) > 1 and diff.std() > 0 else float("nan")
    return {
        "n_pairs": len(diff),
        "without_mean": round(float(without.mean()), 4),
        "with_mean": round(float(with_.mean()), 4),
        "difference": round(float(diff.mean()), 4),
        "up": int((diff > 0).sum()),
        "down": int((diff < 0).sum()),
        "p_paired_t": round(p, 4),
    }


def collect(results: Path, without_tag: str, with_tag: str) -> dict:
    """Per dataset and method, the pooled paired effect and the seeds it pools."""
    pattern = re.compile(rf"cv_(?P<dataset>.+)_{re.escape(without_tag)}(?:_seed(?P<seed>\d+))?_folds0-1-2-3-4\.json")
    out: dict = {}
    for path in sorted(results.glob(f"cv_*_{without_tag}*_folds0-1-2-3-4.json")):
        match = pattern.fullmatch(path.name)
        if match is None:
            continue
        partner = path.with_name(path.name.replace(f"_{without_tag}", f"_{with_tag}", 1))
        if not partner.exists():
            continue
        dataset, seed = match["dataset"], int(match["seed"] or 0)
        without, with_ = json.loads(path.read_text()), json.loads(partner.read_text())
        entry = out.setdefault(dataset, {"seeds": [], "pairs": {m: [] for m in METHODS}})
        entry["seeds"].append(seed)
        for method in METHODS:
            a, b = fold_scores(without, method), fold_scores(with_, method)
            entry["pairs"][method] += [(a[k], b[k]) for k in sorted(a) if k in b]
    return {
        dataset: {"seeds": sorted(e["seeds"])}
        | {method: paired_effect(pairs) for method, pairs in e["pairs"].items() if pairs}
        for dataset, e in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--without", default="transductive-no-pretrain")
    parser.add_argument("--with", dest="with_", default="transductive-pretrain2000")
    args = parser.parse_args()
    summary = collect(args.results, args.without, args.with_)
    (args.results / f"pretrain_effect_{args.without}_vs_{args.with_}.json").write_text(json.dumps(summary, indent=1))
    for dataset, entry in summary.items():
        for method in METHODS:
            if method in entry:
                e = entry[method]
                print(
                    f"{dataset:40s} seeds {entry['seeds']} {method:22s} {e['without_mean']:.3f} -> {e['with_mean']:.3f}"
                    f" ({e['difference']:+.3f}; {e['up']} up / {e['down']} down of {e['n_pairs']}; p {e['p_paired_t']})"
                )


if __name__ == "__main__":
    main()
