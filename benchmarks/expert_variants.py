"""Ways of combining the fine-tuned network with the linear expert, scored offline.

Reads the network-alone test probabilities that ``annotation_cv.py --save-proba`` wrote
for each fold (``<stem>_<tag>_scrobust_network_only_fold<k>.csv``), refits the linear
expert on the same fold with :func:`scrobust_sc.model.fit_linear_expert` (on the network's
training cells, or on every labelled cell of the fold) and scores each combination with
macro-F1 on the test cells. The network does not change between these variants, so
nothing is retrained: a dataset takes about a minute.

Folds: StratifiedKFold(5, shuffle=True, random_state=0), as in ``annotation_cv.py``.

    .venv/bin/python benchmarks/expert_variants.py --data ../shared/data/baron_mouse1.h5ad \
        --proba proba/baron_mouse1_no-pretrain_expert_scrobust_network_only_fold
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scvi
import torch
from scvi import REGISTRY_KEYS
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

import scrobust_sc as scrobust
from scrobust_sc.data._splits import stratified_validation_split
from scrobust_sc.model import fit_linear_expert
from scrobust_sc.model._linear_expert import expert_features

#: Floors of the network's probabilities, ``log((1 - e) p + e / K)``: a network that may be wrong
FLOORS = (0.001, 0.01, 0.05, 0.2)
#: Factors of the network's log-probabilities
NETWORK_WEIGHTS = (0.5, 0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--proba", required=True, help="path prefix of the network-alone CSVs, before the fold number")
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    adata = ad.read_h5ad(args.data)
    y = adata.obs[args.labels_key].astype(str).to_numpy()
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    scores: dict[str, list[float]] = {}
    for k, (train_idx, test_idx) in enumerate(folds):
        path = Path(f"{args.proba}{k}.csv")
        if not path.exists():
            continue
        for name, value in _fold_scores(adata, train_idx, test_idx, y[test_idx], path, args.labels_key).items():
            scores.setdefault(name, []).append(value)
        print(k, {name: round(v[-1], 4) for name, v in scores.items()}, flush=True)
    summary = {
        name: {"mean": round(float(np.mean(v)), 4), "folds": [round(x, 4) for x in v]} for name, v in scores.items()
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"data": args.data, "proba": args.proba, "scores": summary}, indent=1))


def _fold_scores(adata, train_idx, test_idx, truth, proba_csv: Path, labels_key: str) -> dict[str, float]:
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    scvi.settings.seed = 0
    scrobust.SCRobust.setup_anndata(train, labels_key=labels_key)
    model = scrobust.SCRobust(train)  # the same linear-path genes as the run ("auto" choice)
    codes = np.asarray(model.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
    train_pos, _ = stratified_validation_split(codes, 0.1, seed=0, class_names=model.cell_types_)
    x_train, x_test = _log_normalized(train, model), _log_normalized(test, model)
    mask = getattr(model.module, "gene_linear_mask", None)
    genes = None if mask is None else mask.numpy() > 0
    names = np.asarray(model.cell_types_)
    p = pd.read_csv(proba_csv, index_col=0)[list(names)].to_numpy()
    log_network = np.log(p + 1e-12)

    def expert(cells: np.ndarray) -> np.ndarray:
        weight, bias, scale = fit_linear_expert(x_train[cells], codes[cells], model.module.n_labels, genes)
        return expert_features(x_test, scale) @ weight + bias

    def f1(logits: np.ndarray) -> float:
        return float(f1_score(truth, names[logits.argmax(1)], average="macro"))

    first, refitted = expert(np.sort(train_pos)), expert(np.arange(codes.size))
    out = {
        "network alone": f1(log_network),
        "expert alone (training cells)": f1(first),
        "product (training cells)": f1(log_network + first),
        "expert alone (every labelled cell)": f1(refitted),
        "product (every labelled cell)": f1(log_network + refitted),
    }
    for e in FLOORS:
        out[f"floored network {e:g} + expert (training cells)"] = f1(np.log((1 - e) * p + e / names.size) + first)
    for w in NETWORK_WEIGHTS:
        out[f"network x{w:g} + expert (training cells)"] = f1(w * log_network + first)
    return out


def _log_normalized(adata, model):
    adata = adata.copy()
    if not model.module.input_is_log:
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    return adata.X


if __name__ == "__main__":
    main()
