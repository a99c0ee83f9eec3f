"""Cross-validated annotation: scRobust vs logistic regression on the same folds.

With the linear expert (the default), the same network is also scored without it
("scrobust_network_only").

Folds: StratifiedKFold(5, shuffle=True, random_state=0) on obs["cell_type"], as in
shared/data/BASELINES.md. Writes one JSON per run under benchmarks/results/.

``--peers`` adds methods of the benchmark harness (``scrobust_sc.benchmark.METHODS``) on
these folds: the harness keeps types of fewer than 5 cells in training only, so on
references such as baron_mouse1 its own folds differ from BASELINES.md's.

    .venv/bin/python benchmarks/annotation_cv.py --data ../shared/data/baron_mouse1.h5ad --folds 0 1 2 3 4
    .venv/bin/python benchmarks/annotation_cv.py --data ../shared/data/baron_mouse1.h5ad --peers scanvi \
        --skip-scrobust --tag scanvi

``--transductive`` pre-trains on every cell with the test fold's labels hidden, the way
``tl.annotate(adata, labels_key=...)`` pre-trains on a dataset's unlabelled cells.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scvi
import torch
from scvi import REGISTRY_KEYS
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

import scrobust_sc as scrobust
from scrobust_sc.benchmark import METHODS, logistic_regression_baseline
from scrobust_sc.data._splits import stratified_validation_split


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--pretrain-steps", type=int, default=None, help="0 skips pre-training")
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="fine-tuning epochs (default: the package's; earlier runs used 20, as their JSON records)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of scRobust and of the --peers (the folds do not change)"
    )
    parser.add_argument("--train-kwargs", default="{}", help="JSON of extra SCRobust.train arguments")
    parser.add_argument("--model-kwargs", default="{}", help="JSON of extra SCRobust arguments")
    parser.add_argument(
        "--pretrain-kwargs", default="{}", help="JSON of extra SCRobust.pretrain arguments (e.g. precision)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--tag", default="default")
    parser.add_argument("--save-proba", default=None, help="folder for each fold's test probabilities (CSV)")
    parser.add_argument("--peers", default="", help="comma-separated harness methods to run too, e.g. scanvi")
    parser.add_argument("--skip-scrobust", action="store_true", help="run only the peers")
    parser.add_argument(
        "--transductive",
        action="store_true",
        help="pre-train on the training and the test cells, test labels hidden (as tl.annotate(adata, labels_key) "
        "does with unlabelled cells); fine-tuning reads the training cells' labels only",
    )
    parser.add_argument(
        "--label-fraction",
        type=float,
        default=1.0,
        help="keep the labels of this share of each training fold (stratified, at least one cell per type, the same "
        "cells for every seed and method); the other training cells are unlabelled (pre-training only)",
    )
    parser.add_argument(
        "--bf16-inference",
        action="store_true",
        help="predict under torch.autocast(bfloat16) on the model's device (with --train-kwargs and --pretrain-kwargs "
        '\'{"precision": "bf16-mixed"}\' for bf16 end to end)',
    )
    args = parser.parse_args(argv)
    if not 0 < args.label_fraction <= 1:
        parser.error(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    unknown = sorted(set(filter(None, args.peers.split(","))) - set(METHODS))
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {sorted(METHODS)}")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.data)
    y = adata.obs[args.labels_key].astype(str).to_numpy()
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    rows = []
    for k in args.folds:
        train_idx, test_idx = folds[k]
        kept = labelled_subset(y[train_idx], args.label_fraction, seed=k)
        unlabelled_train = np.setdiff1d(np.arange(len(train_idx)), kept)
        train, test = adata[train_idx].copy(), adata[test_idx].copy()
        labelled_train = train[kept].copy() if unlabelled_train.size else train
        t = time.perf_counter()
        pred = logistic_regression_baseline(labelled_train, test, args.labels_key)
        rows.append(_row("logreg", k, y[test_idx], pred, time.perf_counter() - t))
        for peer in filter(None, args.peers.split(",")):
            t = time.perf_counter()
            pred = METHODS[peer](labelled_train, test, args.labels_key, seed=args.seed).labels
            rows.append(_row(peer, k, y[test_idx], pred, time.perf_counter() - t))
        if args.skip_scrobust:
            print(*[r for r in rows if r["fold"] == k], flush=True)
            continue
        scvi.settings.seed = args.seed
        t = time.perf_counter()
        if args.transductive:
            work = hide_labels(adata, np.concatenate([test_idx, train_idx[unlabelled_train]]), args.labels_key)
        else:
            work = hide_labels(train, unlabelled_train, args.labels_key) if unlabelled_train.size else train
        model = scrobust.tl.fit_annotator(
            work,
            args.labels_key,
            model_kwargs=json.loads(args.model_kwargs),
            pretrain=args.pretrain_steps != 0,
            pretrain_kwargs={
                "max_steps": args.pretrain_steps,
                "enable_progress_bar": False,
                **json.loads(args.pretrain_kwargs),
            },
            train_kwargs={"max_epochs": args.max_epochs, "enable_progress_bar": False, **json.loads(args.train_kwargs)},
        )
        with _inference_precision(args.bf16_inference, model.device.type):
            rows.append(_row("scrobust", k, y[test_idx], model.predict(test), time.perf_counter() - t))
            _save_proba(args, k, "scrobust", model, test)
            if model.module.has_linear_expert:  # the same network without the linear expert's logits
                model.module.clear_linear_expert()
                rows.append(_row("scrobust_network_only", k, y[test_idx], model.predict(test), None))
                _save_proba(args, k, "scrobust_network_only", model, test)
        print(*rows[-3:], flush=True)
    result = {
        "dataset": Path(args.data).stem,
        "tag": args.tag,
        "args": vars(args),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "scrobust_sc": scrobust.__version__,
        },
        "rows": rows,
        "summary": _summary(rows),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = result_name(result["dataset"], args.tag, args.seed, args.folds)
    (out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


def _inference_precision(bf16: bool, device_type: str = "cpu"):
    """``torch.autocast`` in bfloat16 on ``device_type`` (``"cpu"``, ``"cuda"``) when ``bf16``, else no change."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def run_stem(tag: str, seed: int) -> str:
    """``tag``, with a seed other than 0 appended, so that seeds never overwrite each other's files."""
    return f"{tag}_seed{seed}" if seed else tag


def result_name(dataset: str, tag: str, seed: int, folds) -> str:
    """The results file of a run (:func:`run_stem` names the seed)."""
    return f"cv_{dataset}_{run_stem(tag, seed)}_folds{'-'.join(map(str, folds))}.json"


def labelled_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a stratified ``fraction`` of ``labels``, at least one per type.

    Each type keeps ``max(1, round(fraction * n))`` of its ``n`` cells, drawn with ``seed``.
    """
    if fraction >= 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    kept = [
        rng.choice(cells, max(1, round(fraction * cells.size)), replace=False)
        for cells in (np.flatnonzero(labels == t) for t in np.unique(labels))
    ]
    return np.sort(np.concatenate(kept))


def hide_labels(adata: ad.AnnData, cells: np.ndarray, labels_key: str) -> ad.AnnData:
    """``adata``'s cells, in its order and sharing its matrix, with ``cells``' labels NaN.

    What ``--transductive`` pre-trains on: ``fit_annotator`` fits only the labelled cells.
    ``adata`` itself is not modified.
    """
    if labels_key not in adata.obs.columns:
        raise ValueError(f"labels_key={labels_key!r} is not a column of adata.obs.")
    labels = adata.obs[labels_key].astype(object).to_numpy().copy()
    labels[np.asarray(cells)] = np.nan
    return ad.AnnData(X=adata.X, obs=pd.DataFrame({labels_key: labels}, index=adata.obs_names), var=adata.var)


def _save_proba(args, fold: int, method: str, model, test) -> None:
    if args.save_proba:
        folder = Path(args.save_proba)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{Path(args.data).stem}_{run_stem(args.tag, args.seed)}_{method}_fold{fold}"
        model.predict(test, soft=True).to_csv(folder / f"{stem}.csv")
        # the fine-tuning's validation cells, as train() drew them (the network never fitted them;
        # the linear expert, refitted on every labelled cell, did)
        codes = np.asarray(model.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
        labelled = np.flatnonzero(codes < len(model.cell_types_))
        _, val_pos = stratified_validation_split(
            codes[labelled], 0.1, seed=scvi.settings.seed or 0, class_names=model.cell_types_
        )
        validation = np.sort(labelled[val_pos])
        proba = model.predict(model.adata, indices=validation, soft=True)
        proba.index = model.adata.obs_names[validation]
        proba.to_csv(folder / f"{stem}_validation.csv")


def _row(method: str, fold: int, truth, pred, seconds: float | None) -> dict:
    return {
        "method": method,
        "fold": fold,
        "f1_macro": round(float(f1_score(truth, pred, average="macro")), 4),
        "accuracy": round(float(np.mean(truth == pred)), 4),
        "seconds": None if seconds is None else round(seconds, 1),
    }


def _summary(rows: list[dict]) -> dict:
    out = {}
    for method in sorted({r["method"] for r in rows}):
        f1 = [r["f1_macro"] for r in rows if r["method"] == method]
        acc = [r["accuracy"] for r in rows if r["method"] == method]
        out[method] = {
            "f1_macro_mean": round(float(np.mean(f1)), 4),
            "f1_macro_std": round(float(np.std(f1)), 4),
            "accuracy_mean": round(float(np.mean(acc)), 4),
            "n_folds": len(f1),
        }
    return out


if __name__ == "__main__":
    main()
