"""A weight of the network against the linear expert, chosen by cross-fitting (issue #10).

For each outer fold (StratifiedKFold(5, shuffle=True, random_state=0), BASELINES.md's
folds), the default model is fine-tuned on the training cells without pre-training and its
test logits split into the network's log-probabilities and the expert's logits. The same
is done on 3 inner folds of the training cells (``random_state=1``) for out-of-fold
logits of every training cell. Each weight ``w`` of ``w * log p_network + expert`` is
scored by macro-F1 out of fold; the best (ties: the weight nearest 1) is applied to the
test fold. It costs about 3x the fine-tuning. Writes a JSON list, one entry per fold.

    .venv/bin/python benchmarks/crossfit_weight.py --data ../shared/data/baron_mouse1.h5ad \
        --out benchmarks/results/crossfit_weight_baron_mouse1.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import anndata as ad
import numpy as np
import pandas as pd
import scvi
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

import scrobust_sc as scrobust

#: Weights of the network's log-probabilities (the expert's logits have weight 1)
WEIGHTS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


def network_and_expert_logits(train, test, labels_key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fine-tune the default model on ``train``; the network's log-probabilities and the expert's logits on ``test``."""
    scvi.settings.seed = 0
    model = scrobust.tl.fit_annotator(
        train, labels_key, pretrain=False, train_kwargs={"max_epochs": 20, "enable_progress_bar": False}
    )
    full, expert = [], []
    with torch.inference_mode():
        for tensors in model._batches(test, None, 256):
            logits, _ = model._classify_batch(tensors)
            full.append(logits.float())
            expert.append(model.module.expert_logits(model.module._normalized(tensors)).float())
    network = torch.log_softmax(torch.cat(full) - torch.cat(expert), dim=1).numpy()
    columns = list(model.cell_types_)
    return pd.DataFrame(network, columns=columns), pd.DataFrame(torch.cat(expert).numpy(), columns=columns)


def combinations(network: pd.DataFrame, expert: pd.DataFrame, names: np.ndarray) -> dict:
    """``w * network + expert`` for every weight, and the network alone; types a fit never saw get -60."""
    net = network.reindex(columns=names, fill_value=-60.0).to_numpy()
    exp = expert.reindex(columns=names, fill_value=-60.0).to_numpy()
    return {**{str(w): w * net + exp for w in WEIGHTS}, "network": net}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata = ad.read_h5ad(args.data)
    y = adata.obs[args.labels_key].astype(str).to_numpy()
    names = np.unique(y)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))

    def f1(truth, logits) -> float:
        return float(f1_score(truth, names[logits.argmax(1)], average="macro"))

    results = []
    for k in args.folds:
        start = time.perf_counter()
        train_idx, test_idx = folds[k]
        parts = network_and_expert_logits(adata[train_idx].copy(), adata[test_idx].copy(), args.labels_key)
        logits = combinations(*parts, names)
        test = {w: f1(y[test_idx], v) for w, v in logits.items()}
        y_train = y[train_idx]
        oof = {w: np.zeros((train_idx.size, names.size)) for w in test}
        inner = StratifiedKFold(args.inner, shuffle=True, random_state=1)
        for fit, held in inner.split(np.zeros(train_idx.size), y_train):
            parts = network_and_expert_logits(
                adata[train_idx[fit]].copy(), adata[train_idx[held]].copy(), args.labels_key
            )
            for w, v in combinations(*parts, names).items():
                oof[w][held] = v
        oof_f1 = {w: f1(y_train, v) for w, v in oof.items()}
        chosen = min(WEIGHTS, key=lambda w: (-round(oof_f1[str(w)], 6), abs(np.log2(w)) if w > 0 else 99))
        row = {"fold": k, "test": test, "oof": oof_f1, "chosen": chosen, "chosen_test": test[str(chosen)]}
        row["seconds"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
