"""The demo behind ``make demo``: pre-train, embed, Leiden, UMAP, on bundled data."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

logger = logging.getLogger("scrobust_sc")


def run_demo(out: Path, *, max_steps: int = 2000, verbose: bool = False) -> dict:
    """Run the demo and write ``demo.h5ad``, ``umap.png`` and ``summary.json`` into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    import scvi

    import scrobust_sc as scrobust
    from scrobust_sc.train import knn_accuracy

    if not verbose:
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
    out.mkdir(parents=True, exist_ok=True)
    scvi.settings.seed = 0
    start = time.perf_counter()
    adata = scrobust.data.pbmc_demo()
    logger.info("demo data: %d sorted PBMCs x %d genes, raw counts", adata.n_obs, adata.n_vars)
    scrobust.model.SCRobust.setup_anndata(adata)
    model = scrobust.model.SCRobust(adata)
    labels = adata.obs["cell_type"].to_numpy()

    knn_random = knn_accuracy(model.get_latent_representation(), labels)
    logger.info("pre-training for %d steps ...", max_steps)
    model.pretrain(max_steps=max_steps, enable_progress_bar=verbose)
    scrobust.tl.embed(adata, model)
    knn_trained = knn_accuracy(adata.obsm["X_scrobust"], labels)
    sc.pp.neighbors(adata, use_rep="X_scrobust", random_state=0)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, random_state=0)
    sc.tl.umap(adata, random_state=0)
    fig, axes = plt.subplots(1, 2, figsize=(16, 5), gridspec_kw={"wspace": 0.75})
    sc.pl.umap(adata, color="cell_type", ax=axes[0], show=False, title="known cell types (never seen in training)")
    sc.pl.umap(adata, color="leiden", ax=axes[1], show=False, title="Leiden on scRobust embeddings")
    fig.savefig(out / "umap.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    model.save(out / "model", overwrite=True)
    adata.write_h5ad(out / "demo.h5ad")
    summary = {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "pretrain_steps": max_steps,
        "knn_accuracy_random_weights": round(knn_random, 4),
        "knn_accuracy_pretrained": round(knn_trained, 4),
        "leiden_clusters": int(adata.obs["leiden"].nunique()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    logger.info(
        "kNN accuracy of the cell types on the embeddings: random weights %.3f, pre-trained %.3f",
        knn_random,
        knn_trained,
    )
    logger.info("wrote %s/{demo.h5ad, umap.png, summary.json, model/}", out)
    return summary
