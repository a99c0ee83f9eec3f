"""A benchmark peer on the folds of BASELINES.md, the folds of ``annotation_cv.py``.

The harness (``scrobust benchmark``) keeps types of fewer than 5 cells in training only,
so on references such as baron_mouse1 its folds differ from BASELINES.md's. This script
runs one of the harness's methods (``scrobust_sc.benchmark.METHODS``) on
StratifiedKFold(5, shuffle=True, random_state=0) over every cell, as BASELINES.md and
``annotation_cv.py`` do, and writes one JSON under benchmarks/results/.

    .venv/bin/python benchmarks/peer_cv.py --data ../shared/data/baron_mouse1.h5ad --method scanvi
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

import scrobust_sc as scrobust
from scrobust_sc.benchmark import METHODS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.data)
    y = adata.obs[args.labels_key].astype(str).to_numpy()
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    rows = []
    for k in args.folds:
        train_idx, test_idx = folds[k]
        start = time.perf_counter()
        pred = METHODS[args.method](adata[train_idx].copy(), adata[test_idx].copy(), args.labels_key, seed=0)
        truth = y[test_idx]
        rows.append(
            {
                "method": args.method,
                "fold": k,
                "f1_macro": round(float(f1_score(truth, pred.labels, average="macro")), 4),
                "accuracy": round(float(np.mean(truth == pred.labels)), 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    f1 = [r["f1_macro"] for r in rows]
    result = {
        "dataset": Path(args.data).stem,
        "args": vars(args),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "versions": {"torch": torch.__version__, "scrobust_sc": scrobust.__version__},
        "rows": rows,
        "summary": {"f1_macro_mean": round(float(np.mean(f1)), 4), "f1_macro_std": round(float(np.std(f1)), 4)},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds_tag = "-".join(map(str, args.folds))
    (out / f"cv_{result['dataset']}_{args.method}_folds{folds_tag}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
