"""Annotation accuracy when 25% / 50% of genes are missing from the query (demo split).

.venv/bin/python benchmarks/query_gene_loss.py
"""

import logging

import numpy as np
import scvi
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

import scrobust_sc as scrobust


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    adata = scrobust.data.pbmc_demo()
    y = adata.obs["cell_type"].astype(str).to_numpy()
    train, test_idx = next(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    scvi.settings.seed = 0
    model = scrobust.tl.fit_annotator(
        adata[train].copy(), "cell_type", pretrain=False, train_kwargs={"enable_progress_bar": False}
    )
    test, truth = adata[test_idx].copy(), y[test_idx]
    rng = np.random.default_rng(0)
    for fraction in (0.0, 0.25, 0.5):
        scores = []
        for _ in range(1 if fraction == 0 else 3):
            keep = np.sort(rng.permutation(test.n_vars)[: int(round((1 - fraction) * test.n_vars))])
            pred = model.predict(test[:, keep].copy())
            scores.append((f1_score(truth, pred, average="macro"), np.mean(pred == truth)))
        s = np.array(scores)
        print(
            f"removed {fraction:.0%}: macro-F1 {s[:, 0].mean():.3f} (min {s[:, 0].min():.3f}), "
            f"accuracy {s[:, 1].mean():.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
