"""Interpretation benchmarks: zero-shot pathway annotation and attention markers.

1. Zero-shot annotation (no labels): an encoder that is only pre-trained annotates each
   cell with the closest cell-type gene set (``scrobust.tl.annotate_pathways``), on
   ``xin_pancreas_scclassify`` (human) and ``baron_mouse1`` (mouse; symbols match
   case-insensitively). Cells are restricted to the types the gene sets cover and the
   sets to the types present. Baseline measured on the same cells and sets:
   ``sc.tl.score_genes`` per set on log-normalised data, argmax.
2. Attention markers on ``zheng_sorted_pbmc_fasttopics``: a fine-tuned model's
   ``scrobust.tl.marker_genes`` (10 per type) against the top 50 of
   ``sc.tl.rank_genes_groups(method="wilcoxon")``; heatmap to docs/_static/.

Writes benchmarks/results/interpretation.json (the parts run replace their keys) and
docs/_static/attention_markers_zheng.png.

    .venv/bin/python benchmarks/interpretation.py
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402
import scvi  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

import scrobust_sc as scrobust  # noqa: E402
from scrobust_sc.model import SCRobust  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GMT = "pancreas_celltype_genesets.gmt"
#: Cell types of the data named differently from the gene set that covers them.
TYPE_TO_SET = {
    "baron_mouse1": {"quiescent_stellate": "PSC", "activated_stellate": "PSC"},
}
SIZES = {
    "d32_h2_l1": {"d_model": 32, "n_heads": 2, "n_layers": 1},
    "d128_h4_l1 (cpu preset)": {},
}
N_SHOWN = 20


def _threads(n: int) -> None:
    # scanpy's numba-backed calls reset torch's thread count: call after each of them
    torch.set_num_threads(n)


def _scores(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)), 4),
        "predicted_counts": {str(k): int(v) for k, v in pd.Series(y_pred).value_counts().items()},
    }


def _show(dataset: str, row: dict) -> None:
    print(dataset, {k: v for k, v in row.items() if k != "predicted_counts"}, row["predicted_counts"], flush=True)


def _matched_sets(var_names: pd.Index, gene_sets: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict]:
    """Each set's genes as ``var_names`` (matched as the model does) and a matching report."""
    matched = scrobust.tl.match_gene_sets(list(var_names), gene_sets)
    upper = {g.upper() for g in var_names}
    names, report = {}, {}
    for name, positions in matched.items():
        names[name] = list(var_names[positions])
        missing = [g for g in gene_sets[name] if g not in set(var_names) and g.upper() not in upper]
        report[name] = {
            "genes": len(gene_sets[name]),
            "matched": int(positions.size),
            "missing_examples": missing[:N_SHOWN],
        }
    return names, report


def _log_normalised(adata: ad.AnnData, is_counts: bool) -> ad.AnnData:
    out = ad.AnnData(X=adata.X.copy(), obs=adata.obs[["truth"]].copy(), var=pd.DataFrame(index=adata.var_names))
    if is_counts:
        sc.pp.normalize_total(out, target_sum=1e4)
        sc.pp.log1p(out)
    return out


def _marker_score_baseline(logged: ad.AnnData, set_genes: dict[str, list[str]], threads: int) -> np.ndarray:
    columns = []
    for name, genes in set_genes.items():
        key = f"score_{name}"
        sc.tl.score_genes(logged, genes, score_name=key, random_state=0, use_raw=False)
        columns.append(key)
    _threads(threads)
    names = np.asarray(list(set_genes), dtype=object)
    return names[logged.obs[columns].to_numpy().argmax(axis=1)]


def _zero_shot(adata: ad.AnnData, set_genes: dict, size: dict, seed: int, steps: int, threads: int) -> dict:
    """Pre-train an encoder on all cells (no labels), annotate by closest gene set."""
    work = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names))
    scvi.settings.seed = seed
    _threads(threads)
    SCRobust.setup_anndata(work)
    model = SCRobust(work, **size)
    out = {}
    if steps > 0:
        scrobust.tl.annotate_pathways(work, model, gene_sets=set_genes)
        out["untrained"] = work.obs["scrobust_pathway_label"].astype(str).to_numpy()
        t = time.perf_counter()
        model.pretrain(max_steps=steps, enable_progress_bar=False)
        out["pretrain_s"] = round(time.perf_counter() - t, 1)
    scrobust.tl.annotate_pathways(work, model, gene_sets=set_genes)
    out["pretrained"] = work.obs["scrobust_pathway_label"].astype(str).to_numpy()
    return out


def pathways(args: argparse.Namespace, data_dir: Path) -> dict:
    gene_sets = scrobust.data.read_gmt(data_dir / GMT)
    results = {}
    for dataset in args.pathway_datasets:
        t0 = time.perf_counter()
        adata = ad.read_h5ad(data_dir / f"{dataset}.h5ad")
        is_counts = bool(adata.uns.get("X_is_raw_counts", True))
        alias = TYPE_TO_SET.get(dataset, {})
        truth = adata.obs["cell_type"].astype(str).map(lambda t, alias=alias: alias.get(t, t))
        adata.obs["truth"] = truth.to_numpy()
        present = [name for name in gene_sets if name in set(truth)]
        covered = truth.isin(present).to_numpy()
        sets = {name: gene_sets[name] for name in present}
        set_genes, report = _matched_sets(adata.var_names, sets)
        y = truth.to_numpy()[covered]
        entry = {
            "cells_total": int(adata.n_obs),
            "cells_evaluated": int(covered.sum()),
            "cells_per_type": {k: int(v) for k, v in truth[covered].value_counts().items()},
            "types_left_out": sorted(set(truth[~covered])),
            "type_to_set": alias,
            "gene_sets": report,
            "X": "raw counts" if is_counts else "log-normalised",
            "rows": [],
        }
        logged = _log_normalised(adata, is_counts)
        pred = _marker_score_baseline(logged, set_genes, args.threads)
        entry["rows"].append({"method": "score_genes argmax", **_scores(y, pred[covered], present)})
        _show(dataset, entry["rows"][-1])
        # the encoder is pre-trained on every cell of the data set (no labels); scored on the covered ones
        for size_name in args.sizes:
            seeds = args.seeds if size_name == "d32_h2_l1" else args.seeds[:1]
            for seed in seeds:
                out = _zero_shot(adata, set_genes, SIZES[size_name], seed, args.pretrain_steps, args.threads)
                if "untrained" in out:
                    row = {"method": "scrobust untrained encoder", "size": size_name, "seed": seed}
                    entry["rows"].append({**row, **_scores(y, out["untrained"][covered], present)})
                    _show(dataset, entry["rows"][-1])
                row = {
                    "method": f"scrobust pre-trained {args.pretrain_steps} steps",
                    "size": size_name,
                    "seed": seed,
                    "pretrain_s": out.get("pretrain_s"),
                }
                entry["rows"].append({**row, **_scores(y, out["pretrained"][covered], present)})
                _show(dataset, entry["rows"][-1])
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        results[dataset] = entry
    return results


def markers(args: argparse.Namespace, data_dir: Path) -> dict:
    t0 = time.perf_counter()
    adata = ad.read_h5ad(data_dir / "zheng_sorted_pbmc_fasttopics.h5ad")
    subsampled = None
    if args.cells_per_type:
        rng = np.random.default_rng(0)
        keep = []
        for _, idx in adata.obs.groupby("cell_type", observed=True).indices.items():
            keep.extend(rng.choice(idx, size=min(args.cells_per_type, idx.size), replace=False))
        adata = adata[np.sort(keep)].copy()
        subsampled = args.cells_per_type
    scvi.settings.seed = 0
    _threads(args.threads)
    t = time.perf_counter()
    model = scrobust.tl.fit_annotator(
        adata,
        "cell_type",
        model_kwargs={"gene_linear_head": False},
        pretrain=False,
        train_kwargs={"max_epochs": args.max_epochs, "enable_progress_bar": False},
    )
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    scrobust.tl.marker_genes(adata, model, groupby="cell_type", n_genes=10)
    markers_s = time.perf_counter() - t
    logged = ad.AnnData(X=adata.X.copy(), obs=adata.obs[["cell_type"]].copy(), var=pd.DataFrame(index=adata.var_names))
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    sc.tl.rank_genes_groups(logged, "cell_type", method="wilcoxon", n_genes=args.top_wilcoxon)
    _threads(args.threads)
    attention = pd.DataFrame(adata.uns["scrobust_markers"]["names"])
    wilcoxon = pd.DataFrame(logged.uns["rank_genes_groups"]["names"])
    rows = []
    for group in attention.columns:
        found = [g for g in attention[group] if g in set(wilcoxon[group])]
        rows.append(
            {
                "cell_type": group,
                "cells": int((adata.obs["cell_type"] == group).sum()),
                "overlap": len(found),
                "attention_markers": list(attention[group]),
                "also_in_wilcoxon_top": found,
            }
        )
        print(rows[-1]["cell_type"], rows[-1]["overlap"], rows[-1]["attention_markers"], flush=True)
    n_markers = len(attention)
    path = REPO / "docs" / "_static" / "attention_markers_zheng.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    scrobust.pl.attention_markers(adata, save=str(path))
    history = model.history
    val_acc = history.get("accuracy_validation")
    return {
        "cells": int(adata.n_obs),
        "genes": int(adata.n_vars),
        "subsampled_cells_per_type": subsampled,
        "fit": {
            "model_kwargs": {"gene_linear_head": False},
            "pretrain": False,
            "max_epochs": args.max_epochs,
            "seed": 0,
            "seconds": round(fit_s, 1),
            "last_validation_accuracy": None if val_acc is None else round(float(val_acc.iloc[-1, 0]), 4),
        },
        "marker_genes_seconds": round(markers_s, 1),
        "n_markers": n_markers,
        "wilcoxon_top": args.top_wilcoxon,
        "chance_overlap": round(n_markers * args.top_wilcoxon / adata.n_vars, 4),
        "mean_overlap": round(float(np.mean([r["overlap"] for r in rows])), 2),
        "rows": rows,
        "heatmap": str(path.relative_to(REPO)),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--parts", nargs="+", choices=["pathways", "markers"], default=["pathways", "markers"])
    parser.add_argument(
        "--pathway-datasets", nargs="+", default=["xin_pancreas_scclassify", "baron_mouse1"], help="h5ad stems"
    )
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="all for d32; the first for d128")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--max-epochs", type=int, default=10, help="fine-tuning epochs for the markers")
    parser.add_argument("--cells-per-type", type=int, default=None, help="subsample Zheng for the markers")
    parser.add_argument("--top-wilcoxon", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "interpretation.json"))
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    sc.settings.verbosity = 0
    _threads(args.threads)
    data_dir = Path(args.data_dir)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    t0 = time.perf_counter()
    if "pathways" in args.parts:
        result["pathways"] = pathways(args, data_dir)
    if "markers" in args.parts:
        result["markers"] = markers(args, data_dir)
    result["last_run"] = {
        "parts": args.parts,
        "args": vars(args),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "scanpy": version("scanpy"),
            "scrobust_sc": scrobust.__version__,
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} in {result['last_run']['seconds']} s")


if __name__ == "__main__":
    main()
