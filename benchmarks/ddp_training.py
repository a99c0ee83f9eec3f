"""Pre-training and fine-tuning through Lightning's DDP on 2 CPU processes (gloo), end to end.

A check, not a timing: 300 demo cells, 12 pre-training steps and 2 fine-tuning epochs with
``accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true"``. Each process
prints what its ``model.history`` holds: rank 0 the losses and the kNN monitor, the others
nothing (Lightning logs on rank 0).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ddp_training.py
"""

from __future__ import annotations

import scvi
import torch.distributed as dist

import scrobust_sc as scrobust
from scrobust_sc import SCRobust


def main() -> None:
    scvi.settings.seed = 0
    adata = scrobust.data.pbmc_demo()[:300].copy()
    SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = SCRobust(adata)
    ddp = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_find_unused_parameters_true"}
    model.pretrain(max_steps=12, batch_size=32, enable_progress_bar=False, **ddp)
    rank = dist.get_rank()
    knn = model.history.get(scrobust.train.KNN_METRIC)
    knn = None if knn is None else knn.iloc[:, 0].astype(float).dropna().round(3).tolist()
    print(f"rank {rank}: pre-training history {sorted(model.history)}, kNN accuracy {knn}", flush=True)
    model.train(max_epochs=2, batch_size=32, n_genes=64, enable_progress_bar=False, **ddp)
    f1 = model.history.get("f1_macro_validation")
    f1 = None if f1 is None else f1.iloc[:, 0].astype(float).round(3).tolist()
    print(f"rank {rank}: fine-tuning validation macro-F1 by epoch {f1}", flush=True)


if __name__ == "__main__":
    main()
