"""Gather and backward of the gene-embedding rows: ``weight[idx]`` against ``F.embedding``.

The encoder gathers each token's row of the gene-embedding table; on CPU the backward of
``weight[idx]`` is an accumulating ``index_put``, that of ``F.embedding`` a dedicated
kernel. Same rows, same gradients (checked here); writes
``benchmarks/results/embedding_gather.json`` with the milliseconds of forward + backward.

    .venv/bin/python benchmarks/embedding_gather.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

#: (name, vocabulary, width, cells, tokens per cell): the demo data's 5,507 genes at the
#: default width, fine-tuning (800 tokens) and pre-training views (200), and the paper's width
SHAPES = [
    ("default, fine-tuning", 5507, 128, 64, 800),
    ("default, pre-training view", 5507, 128, 64, 200),
    ("paper, fine-tuning", 5507, 512, 64, 800),
]


def _milliseconds(gather, weight, idx, grad, repeats: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            weight.grad = None
            gather(weight, idx).backward(grad)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gathers = {"weight[idx]": lambda w, i: w[i], "F.embedding": lambda w, i: F.embedding(i, w)}
    rows = []
    for name, vocabulary, width, cells, tokens in SHAPES:
        weight = torch.randn(vocabulary, width, requires_grad=True)
        idx = torch.randint(0, vocabulary, (cells, tokens))
        grad = torch.randn(cells, tokens, width)
        grads = []
        for gather in gathers.values():
            weight.grad = None
            gather(weight, idx).backward(grad)
            grads.append(weight.grad.clone())
        torch.testing.assert_close(grads[0], grads[1])
        row = {"shape": name, "vocabulary": vocabulary, "width": width, "cells": cells, "tokens": tokens}
        for label, gather in gathers.items():
            row[f"{label} ms"] = round(_milliseconds(gather, weight, idx, grad, args.repeats), 2)
        rows.append(row)
        print(row, flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "embedding_gather.json"
    path.write_text(json.dumps({"torch": torch.__version__, "machine": machine, "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
