"""How well scRobust's "is this cell new?" signals rank held-out types: AUROC per type.

For each cell type in turn (the harness's ``novel`` splits), fine-tunes scRobust without
it and scores the test cells with (a) the novelty ``tl.annotate`` thresholds (the larger
of the two below), (b) its energy score (``-logsumexp`` of the logits, calibrated on the
validation cells), (c) its distance score (to the predicted type's training cells in the
fine-tuned embedding) and (d) one minus the top class probability. Also the share of the
held-out type's cells, and of the known cells, above the default threshold. Writes one
JSON under benchmarks/results/.

    .venv/bin/python benchmarks/novelty_scores.py --data ../shared/data/xin_pancreas_scclassify.h5ad
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scvi
import torch
from sklearn.metrics import roc_auc_score

import scrobust_sc as scrobust
from scrobust_sc.benchmark import novel_splits
from scrobust_sc.module._module import DISTANCE_NOVELTY_SCALE
from scrobust_sc.tl._annotate import DEFAULT_NOVELTY_THRESHOLD


@torch.inference_mode()
def _scores(model, adata) -> tuple[np.ndarray, ...]:
    """Top probability, novelty and its two scores (each 1 at its threshold), in one pass."""
    top, novelty, energy, distance = [], [], [], []
    for batch in model._batches(adata, None, 256):
        logits, z = model._classify_batch(batch)
        top.append(torch.softmax(logits.float(), dim=1).max(1).values)
        novelty.append(model.module.novelty(z, logits))
        energy.append(model.module.energy_novelty(logits))
        distance.append(model.module.distance_novelty(z, logits.argmax(1)) / DISTANCE_NOVELTY_SCALE)
    return tuple(torch.cat(parts).numpy() for parts in (top, novelty, energy, distance))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.data)
    labels = adata.obs[args.labels_key].astype(str).to_numpy()
    rows = []
    for split in novel_splits(labels, n_folds=5, seed=0):
        train, test = adata[split.train].copy(), adata[split.test].copy()
        scvi.settings.seed = 0
        start = time.perf_counter()
        model = scrobust.tl.fit_annotator(
            train, args.labels_key, pretrain=False, train_kwargs={"enable_progress_bar": False}
        )
        top, novelty, energy, distance = _scores(model, test)
        novel = labels[split.test] == split.held_out
        unknown = novelty > DEFAULT_NOVELTY_THRESHOLD
        rows.append(
            {
                "held_out": split.held_out,
                "auroc_novelty": float(roc_auc_score(novel, novelty)),
                "auroc_energy": float(roc_auc_score(novel, energy)),
                "auroc_distance": float(roc_auc_score(novel, distance)),
                "auroc_one_minus_max_probability": float(roc_auc_score(novel, 1.0 - top)),
                "unknown_held_out": float(unknown[novel].mean()),
                "unknown_known": float(unknown[~novel].mean()),
                "seconds": time.perf_counter() - start,
            }
        )
        print(rows[-1], flush=True)
    out = Path(args.out) / f"novelty_scores_{Path(args.data).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": Path(args.data).stem, "args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
