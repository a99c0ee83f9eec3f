"""``tl.annotate`` end to end with its defaults, as a user runs it: wall time, peak RSS, and the hidden cells' scores.

For each dataset, the labels of one fifth of the cells are hidden (fold 0 of
``StratifiedKFold(5, shuffle=True, random_state=0)``, the folds of
``shared/data/BASELINES.md``), and ``scrobust.tl.annotate(adata, labels_key=...)`` runs with
its defaults: pre-training on every cell, fine-tuning on the labelled ones, annotating
every cell, the "Unknown" rule included. Each dataset runs in a fresh process, so its peak
RSS is its own. The clock covers the ``annotate`` call alone (not reading the file or
importing torch). Peaks (``var`` with ``chrom``, ``start`` and ``end``) run with
``modality="atac"``.

    .venv/bin/python benchmarks/annotate_wall_time.py --data-dir ../shared/data --threads 2

writes ``benchmarks/results/annotate_wall_time.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: The shared datasets with cell-type labels (``pc9_erlotinib_day11`` has conditions, not types).
DATASETS = (
    "zheng_sorted_pbmc_fasttopics",
    "baron_mouse1",
    "pancreas_endocrinogenesis_bastidas",
    "cellbench_lung_celllines",
    "xin_pancreas_scclassify",
    "scatac_granja2019_bonemarrow_epichaos",
)
PEAK_COLUMNS = {"chrom", "start", "end"}


def hidden_cells(labels, *, n_folds: int = 5, fold: int = 0, seed: int = 0) -> np.ndarray:
    """Sorted positions of the cells whose labels are hidden: fold ``fold`` of a stratified split.

    Examples
    --------
    >>> labels = ["a"] * 10 + ["b"] * 5
    >>> hidden_cells(labels).size
    3
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels).astype(str)
    splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(labels.size), labels)
    return np.sort(list(splits)[fold][1])


def measure(path: str, *, labels_key: str, threads: int, annotate_kwargs: dict | None = None) -> dict:
    """Hide fold 0's labels of the dataset at ``path``, annotate it end to end, and score the hidden cells."""
    import warnings

    import anndata as ad
    import scvi
    import torch
    from sklearn.metrics import f1_score

    import scrobust_sc as scrobust

    scvi.settings.seed = 0
    scvi.settings.num_threads = threads
    torch.set_num_threads(threads)
    adata = ad.read_h5ad(path)
    truth = adata.obs[labels_key].astype(str).to_numpy()
    hidden = hidden_cells(truth)
    labels = adata.obs[labels_key].astype(object).to_numpy().copy()
    labels[hidden] = np.nan
    adata.obs["labels_to_learn"] = labels
    modality = "atac" if PEAK_COLUMNS <= set(adata.var.columns) else "rna"
    rss_before = _peak_rss_gib()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scrobust.tl.annotate(adata, labels_key="labels_to_learn", modality=modality, **(annotate_kwargs or {}))
    seconds = time.perf_counter() - start
    called = adata.obs["scrobust_label"].astype(str).to_numpy()
    types = np.asarray(adata.uns["scrobust"]["cell_types"])
    most_likely = types[np.asarray(adata.obsm["scrobust_probabilities"]).argmax(axis=1)]
    known = np.unique(np.delete(truth, hidden))
    return {
        "dataset": Path(path).stem,
        "modality": modality,
        "n_cells": int(adata.n_obs),
        "n_features": int(adata.n_vars),
        "n_hidden": int(hidden.size),
        "threads": threads,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(_peak_rss_gib(), 2),
        "peak_rss_gib_before_annotate": round(rss_before, 2),
        "unknown_share_all": round(float(np.mean(called == "Unknown")), 4),
        "unknown_share_hidden": round(float(np.mean(called[hidden] == "Unknown")), 4),
        "hidden_macro_f1_most_likely": round(
            float(f1_score(truth[hidden], most_likely[hidden], labels=known, average="macro")), 4
        ),
        "hidden_macro_f1_unknown_counted_wrong": round(
            float(f1_score(truth[hidden], called[hidden], labels=known, average="macro")), 4
        ),
        "annotate_kwargs": annotate_kwargs or {},
    }


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _machine(threads: int) -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _measure_in_child(path: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), "--labels-key", args.labels_key]
    cmd += ["--threads", str(args.threads), "--annotate-kwargs", args.annotate_kwargs]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"annotating {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data", help="folder of the shared datasets")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help="file stems under --data-dir")
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--annotate-kwargs", default="{}", help="JSON of tl.annotate arguments (default: none)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "annotate_wall_time.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kwargs = json.loads(args.annotate_kwargs)
    if args.child:
        row = measure(args.child, labels_key=args.labels_key, threads=args.threads, annotate_kwargs=kwargs)
        print(json.dumps(row))
        return
    paths = [Path(args.data_dir) / f"{name}.h5ad" for name in args.datasets]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        parser.error(f"datasets not found: {missing}; pass --data-dir (the shared data folder) or --datasets.")
    rows = []
    for path in paths:
        rows.append(_measure_in_child(path, args))
        print(json.dumps(rows[-1]), flush=True)
        result = {"machine": _machine(args.threads), "results": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
