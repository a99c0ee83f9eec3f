"""The "Unknown" rule on each cell's own novelty against the median over its neighbourhood.

Trains scRobust as the benchmark harness does (``scrobust_method``'s ``fit_annotator``
path, seed 0, no pre-training unless ``--pretrain-steps``, on the training cells and with
``--pretrain-on-test`` the test cells too) on the harness's splits and
scores both rules on the same trained model:

- ``--protocol novel``: each type with at least 10 cells left out of training in turn
  (``novel_splits``); share of held-out cells called Unknown, known-type macro-F1 with
  rejected cells counted wrong (and without rejection), share of known cells rejected,
  AUROC of the score;
- ``--protocol cross``: train on one ``--split-key`` value, annotate another; share of the
  query's cells of types the reference holds called Unknown (every one a false alarm), and
  of the other types (novel to the reference).

    .venv/bin/python benchmarks/novelty_neighbourhood.py --data ../shared/data/xin_pancreas_scclassify.h5ad
    .venv/bin/python benchmarks/novelty_neighbourhood.py --data ../shared/data/cellbench_lung_celllines.h5ad \
        --protocol cross --split-key platform --train Drop-seq --test CEL-seq2
    .venv/bin/python benchmarks/novelty_neighbourhood.py --modality atac \
        --data ../shared/data/scatac_granja2019_bonemarrow_epichaos.h5ad \
        --train-kwargs '{"n_genes": 200, "gene_selection": "unique", "max_epochs": 5}'

Peaks: neighbourhoods in the LSI of the test cells' TF-IDF peaks (``peak_lsi``).

Writes ``benchmarks/results/novelty_neighbourhood_<dataset>_<protocol>[_<tag>].json``.
``--save-scores DIR`` also keeps each split's per-cell scores; ``--from-scores DIR
--thresholds 1 0.75 0.5`` then scores both rules at other thresholds without training
(``novelty_thresholds_<dataset>_<protocol>[_<tag>].json``).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scvi
import torch
from sklearn.metrics import f1_score, roc_auc_score

from scrobust_sc.benchmark._splits import novel_splits
from scrobust_sc.module._module import DISTANCE_NOVELTY_SCALE
from scrobust_sc.tl import fit_annotator
from scrobust_sc.tl._novelty import (
    DEFAULT_NOVELTY_NEIGHBORS,
    nearest_cells,
    neighbourhood_median,
    neighbourhood_novelty,
    neighbourhood_space,
)

THRESHOLD = 1.0
METRICS = ("novel_caught", "known_rejected", "known_f1", "known_f1_without_rejection", "auroc")


def rule_scores(
    novelty: np.ndarray, true: np.ndarray, pred: np.ndarray, known: np.ndarray, threshold: float = THRESHOLD
) -> dict:
    """Unknown calls of one rule: held-out share caught, known-type F1 and rejections, AUROC."""
    rejected = novelty > threshold
    out = {"known_rejected": float(rejected[known].mean())}
    if (~known).any():
        out["novel_caught"] = float(rejected[~known].mean())
        out["auroc"] = float(roc_auc_score(~known, novelty)) if known.any() else float("nan")
    if known.any():
        types = np.unique(true[known])
        labels = np.where(rejected, "Unknown", pred)
        out["known_f1"] = float(f1_score(true[known], labels[known], average="macro", labels=types))
        out["known_f1_without_rejection"] = float(f1_score(true[known], pred[known], average="macro", labels=types))
    return out


def run_split(train: ad.AnnData, test: ad.AnnData, known: np.ndarray, args) -> dict:
    scvi.settings.seed = 0
    quiet = {"enable_progress_bar": False}
    start = time.perf_counter()
    model = fit_annotator(
        train,
        args.labels_key,
        unlabelled=test if args.pretrain_on_test else None,
        pretrain=args.pretrain_steps > 0,
        pretrain_kwargs={**quiet, "max_steps": args.pretrain_steps} if args.pretrain_steps > 0 else quiet,
        train_kwargs={**quiet, **json.loads(args.train_kwargs)},
        modality=args.modality,
    )
    proba, own = model._classify_cells(test, None, 256)
    pred = proba.columns.to_numpy()[proba.to_numpy().argmax(1)].astype(str)
    true = test.obs[args.labels_key].astype(str).to_numpy()
    smoothed = neighbourhood_novelty(
        own, test.X, input_is_log=bool(model.module.input_is_log), n_neighbors=args.neighbors, modality=args.modality
    )
    if args.save_scores:
        _save_scores(model, test, true, pred, known, own, Path(args.save_scores) / f"{args.split_name}.npz")
    return {
        "n_test": int(test.n_obs),
        "n_novel": int((~known).sum()),
        "each_cell": rule_scores(own, true, pred, known),
        "neighbourhood": rule_scores(smoothed, true, pred, known),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _save_scores(model, test, true, pred, known, own, path: Path) -> None:
    """Each test cell's two novelty scores, labels and expression PCs, to try other rules offline."""
    energy, distance = [], []
    with torch.inference_mode():
        for t in model._batches(test, None, 256):
            logits, z = model._classify_batch(t)
            energy.append(model.module.energy_novelty(logits).cpu())
            distance.append((model.module.distance_novelty(z, logits.argmax(1)) / DISTANCE_NOVELTY_SCALE).cpu())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        novelty=own,
        energy=torch.cat(energy).numpy(),
        distance=torch.cat(distance).numpy(),
        true=np.asarray(true, dtype=str),
        pred=np.asarray(pred, dtype=str),
        known=known,
        pcs=neighbourhood_space(test.X, input_is_log=bool(model.module.input_is_log), modality=model.modality),
    )


def threshold_curve(scores: dict, thresholds, n_neighbors: int = DEFAULT_NOVELTY_NEIGHBORS) -> dict:
    """Both rules at each threshold, from one split's saved scores (``--save-scores``)."""
    known, true, pred = scores["known"], scores["true"], scores["pred"]
    own = scores["novelty"]
    smoothed = neighbourhood_median(own, nearest_cells(scores["pcs"], n_neighbors))
    return {
        rule: {f"{t:g}": rule_scores(values, true, pred, known, threshold=t) for t in thresholds}
        for rule, values in (("each_cell", own), ("neighbourhood", smoothed))
    }


def _curves_from_scores(args) -> None:
    """``--from-scores``: the threshold curve of every saved split of ``--data``'s dataset."""
    name = Path(args.data).stem
    files = sorted(Path(args.from_scores).glob(f"{name}_*.npz"))
    if not files:
        raise SystemExit(f"No {name}_*.npz in {args.from_scores}: run with --save-scores first.")
    splits = {}
    for f in files:
        with np.load(f) as saved:
            splits[f.stem[len(name) + 1 :]] = threshold_curve(dict(saved), args.thresholds, args.neighbors)
    rules = ("each_cell", "neighbourhood")
    mean = {
        rule: {
            t: {m: float(np.nanmean([s[rule][t].get(m, np.nan) for s in splits.values()])) for m in METRICS}
            for t in next(iter(splits.values()))[rule]
        }
        for rule in rules
    }
    suffix = f"_{args.tag}" if args.tag else ""
    path = Path(args.out) / f"novelty_thresholds_{name}_{args.protocol}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"thresholds": args.thresholds, "neighbors": args.neighbors, "protocol": args.protocol}
    path.write_text(json.dumps({"dataset": name, "settings": settings, "splits": splits, "mean": mean}, indent=2))
    print(json.dumps(mean, indent=2))
    print("wrote", path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--protocol", default="novel", choices=["novel", "cross"])
    parser.add_argument("--split-key", default="platform")
    parser.add_argument("--train", default=None, help="--split-key value to train on (cross)")
    parser.add_argument("--test", default=None, help="--split-key value to annotate (cross)")
    parser.add_argument("--held-out", nargs="*", default=None, help="only these types (novel)")
    parser.add_argument("--neighbors", type=int, default=DEFAULT_NOVELTY_NEIGHBORS)
    parser.add_argument("--pretrain-steps", type=int, default=0)
    parser.add_argument(
        "--pretrain-on-test",
        action="store_true",
        help="pre-train on the test cells too, labels hidden (the harness's pretrain_on_test)",
    )
    parser.add_argument("--modality", default="rna", choices=["rna", "atac"], help="genes or peaks (PCA or LSI)")
    parser.add_argument("--train-kwargs", default="{}", help="JSON of extra SCRobust.train arguments")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--save-scores", default=None, help="folder for each split's per-cell scores (.npz)")
    parser.add_argument(
        "--from-scores", default=None, help="train nothing: the threshold curve of the scores saved in this folder"
    )
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    args = parser.parse_args(argv)
    if args.from_scores:
        _curves_from_scores(args)
        return
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.data)
    labels = adata.obs[args.labels_key].astype(str).to_numpy()
    results = {}
    if args.protocol == "novel":
        for split in novel_splits(labels):
            if args.held_out and split.held_out not in args.held_out:
                continue
            test = adata[split.test].copy()
            known = labels[split.test] != split.held_out
            args.split_name = f"{Path(args.data).stem}_{re.sub(r'[^A-Za-z0-9+-]+', '_', split.held_out)}"
            results[split.held_out] = run_split(adata[split.train].copy(), test, known, args)
            print(split.held_out, json.dumps(results[split.held_out]), flush=True)
    else:
        if args.train is None or args.test is None:
            parser.error("--protocol cross needs --train and --test")
        side = adata.obs[args.split_key].astype(str).to_numpy()
        train, test = adata[side == args.train].copy(), adata[side == args.test].copy()
        known = np.isin(test.obs[args.labels_key].astype(str), train.obs[args.labels_key].astype(str).unique())
        key = f"{args.train} -> {args.test}"
        args.split_name = f"{Path(args.data).stem}_{args.train}-to-{args.test}"
        results[key] = run_split(train, test, known, args)
        print(key, json.dumps(results[key]), flush=True)
    rules = ("each_cell", "neighbourhood")
    mean = {
        rule: {
            metric: float(np.nanmean([r[rule][metric] for r in results.values() if metric in r[rule]]))
            for metric in results[next(iter(results))][rule]
        }
        for rule in rules
    }
    name = Path(args.data).stem
    suffix = f"_{args.tag}" if args.tag else ""
    path = Path(args.out) / f"novelty_neighbourhood_{name}_{args.protocol}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "save_scores", "split_name")}
    path.write_text(json.dumps({"dataset": name, "settings": settings, "splits": results, "mean": mean}, indent=2))
    print(json.dumps(mean, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main()
