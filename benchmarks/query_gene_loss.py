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

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
torch.set_num_threads(1)
adata = scrobust.data.pbmc_demo()
y = adata.obs.cell_type.astype(str).values
tr, te = next(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
scvi.settings.seed = 0
model = scrobust.tl.fit_annotator(
    adata[tr].copy(), "cell_type", pretrain=False, train_kwargs={"enable_progress_bar": False}
)
test = adata[te].copy()
rng = np.random.default_rng(0)
for frac in [0.0, 0.25, 0.5]:
    res = []
    for rep in range(3):
        keep = np.sort(rng.permutation(test.n_vars)[: int(round((1 - frac) * test.n_vars))])
        p = model.predict(test[:, keep].copy())
        res.append((f1_score(y[te], p, average="macro"), (p == y[te]).mean()))
        if frac == 0:
            break
    r = np.array(res)
    print(
        f"removed {frac:.0%}: macro-F1 {r[:, 0].mean():.3f} (min {r[:, 0].min():.3f}), accuracy {r[:, 1].mean():.3f}",
        flush=True,
    )
