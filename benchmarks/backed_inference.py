"""Embedding cells read from disk (``backed="r"``): peak RSS stays flat as the cell count grows.

Writes a synthetic sparse count matrix (cells x 20,000 genes, ~1% non-zeros) to an
``.h5ad`` in row chunks, trains nothing (embedding cost does not depend on the weights),
and embeds the first N cells of the file opened with ``backed="r"``, each N in a fresh
process so that its peak RSS is its own.

    .venv/bin/python benchmarks/backed_inference.py --cells 20000 50000 200000
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

N_GENES, DENSITY = 20_000, 0.01
CHUNK_VALUES = 1 << 18


def write_synthetic(path: Path, n_cells: int, chunk: int = 20_000, seed: int = 0) -> None:
    """Write ``n_cells`` synthetic cells to ``path`` without holding them all in memory."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.6, 1.0, N_GENES)
    p = rate / rate.sum()
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)])
    ad.AnnData(sp.csr_matrix((0, N_GENES), dtype=np.float32), obs=obs.iloc[:0], var=var).write_h5ad(path)
    with h5py.File(path, "a") as f:
        del f["obs"]
        write_elem(f, "obs", obs)
        # HDF5 chunks of 2^18 values: the default for an empty dataset (1,024) makes reading
        # hold ~7 KB per cell read in HDF5's memory, a cost of this writer, not of files
        # written by write_h5ad (~20,000-value chunks) that users have.
        del f["X"]
        empty = sp.csr_matrix((0, N_GENES), dtype=np.float32)
        write_elem(f, "X", empty, dataset_kwargs={"chunks": (CHUNK_VALUES,)})
        x = sparse_dataset(f["X"])
        for start in range(0, n_cells, chunk):
            n = min(chunk, n_cells - start)
            nnz = rng.poisson(DENSITY * N_GENES, n)
            rows = np.repeat(np.arange(n), nnz)
            cols = rng.choice(N_GENES, nnz.sum(), p=p)
            values = rng.geometric(0.5, rows.size).astype(np.float32)
            block = sp.csr_matrix((values, (rows, cols)), shape=(n, N_GENES))
            block.sum_duplicates()
            x.append(block)


def measure(path: str, n_cells: int, threads: int) -> dict:
    import anndata as ad
    import scvi
    import torch

    import scrobust_sc as scrobust

    scvi.settings.seed = 0
    torch.set_num_threads(threads)
    backed = ad.read_h5ad(path, backed="r")
    reference = backed[:2000].to_memory()
    scrobust.SCRobust.setup_anndata(reference)
    model = scrobust.SCRobust(reference)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    z = model.get_latent_representation(backed[:n_cells] if n_cells < backed.n_obs else backed)
    seconds = time.perf_counter() - start
    return {
        "n_cells": n_cells,
        "seconds": seconds,
        "cells_per_s": n_cells / seconds,
        "embedding_shape": list(z.shape),
        "peak_rss_gib_before_embedding": before,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[20_000, 50_000, 200_000])
    parser.add_argument("--file", default="/tmp/scrobust_backed_synthetic.h5ad")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "backed_inference.json"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.file, args.child, args.threads)), flush=True)
        return
    path = Path(args.file)
    if not path.exists():
        start = time.perf_counter()
        write_synthetic(path, max(args.cells))
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for n in args.cells:
        cmd = [sys.executable, __file__, "--child", str(n), "--file", str(path), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise SystemExit(done.stderr[-3000:])
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
        print(rows[-1], flush=True)
    import torch

    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
        "file": {"genes": N_GENES, "density": DENSITY, "bytes": path.stat().st_size},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
