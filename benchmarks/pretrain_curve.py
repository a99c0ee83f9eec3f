"""Pre-training's convergence curve: kNN accuracy of the cell types from the embeddings vs optimiser steps.

Pre-trains the default model (labels registered, never used by the weights) with a
:class:`scrobust_sc.train.KNNMonitor` evaluated ``--evaluations`` times over the run, and
writes ``benchmarks/results/pretrain_curve_<dataset>.json``: the random-weights accuracy
(step 0), then per evaluation the step, the kNN accuracy and the validation losses.

    .venv/bin/python benchmarks/pretrain_curve.py --data demo --threads 1
    .venv/bin/python benchmarks/pretrain_curve.py --data ../shared/data/baron_mouse1.h5ad --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help='an .h5ad of raw counts, or "demo" (the bundled PBMCs)')
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--evaluations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import anndata as ad
    import scvi
    import torch

    import scrobust_sc as scrobust
    from scrobust_sc.train import KNN_METRIC, KNNMonitor, knn_accuracy, knn_sample

    if args.threads:
        torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    adata = scrobust.data.pbmc_demo() if args.data == "demo" else ad.read_h5ad(args.data)
    dataset = "pbmc_demo" if args.data == "demo" else Path(args.data).stem
    scrobust.SCRobust.setup_anndata(adata, labels_key=args.labels_key)
    model = scrobust.SCRobust(adata)
    labels = adata.obs[args.labels_key].astype(str).to_numpy()
    cells = knn_sample(labels, seed=args.seed)
    random_weights = knn_accuracy(model.get_latent_representation(indices=cells), labels[cells])
    monitor = KNNMonitor(lambda: model.get_latent_representation(indices=cells), labels[cells], args.evaluations)
    start = time.perf_counter()
    model.pretrain(
        max_steps=args.steps,
        knn_monitor=False,
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    seconds = time.perf_counter() - start
    history = model.history
    knn = history[KNN_METRIC].iloc[:, 0].astype(float).dropna()
    rows = [{"step": 0, "knn_accuracy": round(random_weights, 4)}]
    for (epoch, step), accuracy in zip(monitor.evaluated, knn.to_numpy(), strict=True):
        row = {"epoch": epoch, "step": step, "knn_accuracy": round(float(accuracy), 4)}
        for key in ("contrastive_loss_validation", "expression_loss_validation"):
            values = history[key].iloc[:, 0].astype(float) if key in history else None
            if values is not None and epoch - 1 in values.index and np.isfinite(values.loc[epoch - 1]):
                row[key] = round(float(values.loc[epoch - 1]), 4)  # none when the step budget ends an epoch early
        rows.append(row)
    result = {
        "dataset": dataset,
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "types": int(np.unique(labels).size),
        "monitored_cells": int(cells.size),
        "args": vars(args),
        "seconds": round(seconds, 1),
        "machine": {"cpu": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "curve": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pretrain_curve_{dataset}.json"
    path.write_text(json.dumps(result, indent=1))
    for row in rows:
        print(row)
    print(f"{seconds:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
