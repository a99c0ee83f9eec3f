"""bf16 against fp32: how far apart two runs' test probabilities are, fold by fold.

Reads the per-fold test probabilities that ``annotation_cv.py --save-proba`` wrote for two
tags (the same data, folds and seed; one run fine-tuned with ``precision="bf16-mixed"``
and predicting under ``torch.autocast(bfloat16)``), and writes, per method and fold, the
largest and the mean absolute difference of the probabilities and the share of cells given
the same type, to ``benchmarks/results/precision_agreement_<dataset>[_<name>].json``.

.venv/bin/python benchmarks/annotation_cv.py --data ../shared/data/baron_mouse1.h5ad --pretrain-steps 0 \\
    --threads 1 --save-proba /tmp/proba --tag no-pretrain_fp32-vs-bf16_fp32
.venv/bin/python benchmarks/annotation_cv.py --data ../shared/data/baron_mouse1.h5ad --pretrain-steps 0 \\
    --threads 1 --save-proba /tmp/proba --train-kwargs '{"precision": "bf16-mixed"}' --bf16-inference \\
    --tag no-pretrain_fp32-vs-bf16_bf16
.venv/bin/python benchmarks/precision_agreement.py --proba /tmp/proba --dataset baron_mouse1 \\
    --fp32 no-pretrain_fp32-vs-bf16_fp32 --bf16 no-pretrain_fp32-vs-bf16_bf16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def agreement(fp32: pd.DataFrame, bf16: pd.DataFrame) -> dict[str, float]:
    """Largest and mean absolute probability difference, and the share of equal top types.

    Examples
    --------
    >>> a = pd.DataFrame({"x": [0.9, 0.2], "y": [0.1, 0.8]})
    >>> b = pd.DataFrame({"x": [0.4, 0.2], "y": [0.6, 0.8]})
    >>> agreement(a, b)
    {'max_abs_diff': 0.5, 'mean_abs_diff': 0.25, 'same_type': 0.5}
    """
    if list(fp32.index) != list(bf16.index) or list(fp32.columns) != list(bf16.columns):
        raise ValueError("The two runs' probabilities cover other cells or types: compare runs of the same folds.")
    diff = np.abs(fp32.to_numpy() - bf16.to_numpy())
    same = fp32.to_numpy().argmax(axis=1) == bf16.to_numpy().argmax(axis=1)
    return {
        "max_abs_diff": round(float(diff.max()), 4),
        "mean_abs_diff": round(float(diff.mean()), 5),
        "same_type": round(float(same.mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proba", required=True, help="the --save-proba folder of both runs")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--fp32", required=True, help="tag of the fp32 run")
    parser.add_argument("--bf16", required=True, help="tag of the bf16 run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="", help="appended to the file name, e.g. pretrained (default: none)")
    args = parser.parse_args()
    folder = Path(args.proba)
    suffix = "" if args.seed == 0 else f"_seed{args.seed}"
    rows = []
    for method in ("scrobust", "scrobust_network_only"):
        for fold in range(5):
            paths = [folder / f"{args.dataset}_{tag}{suffix}_{method}_fold{fold}.csv" for tag in (args.fp32, args.bf16)]
            if not all(p.exists() for p in paths):
                continue
            fp32, bf16 = (pd.read_csv(p, index_col=0) for p in paths)
            rows.append({"method": method, "fold": fold, "cells": len(fp32), **agreement(fp32, bf16)})
    if not rows:
        parser.error(f"no pair of probability files for {args.dataset} in {folder}")
    result = {"dataset": args.dataset, "fp32": args.fp32, "bf16": args.bf16, "rows": rows}
    out = Path(args.out) / f"precision_agreement_{args.dataset}{'_' + args.name if args.name else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
