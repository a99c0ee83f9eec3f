"""Memory of the "Unknown" neighbourhoods on a large query: the PCA fitted on every cell or on a sample.

``tl.annotate`` and ``scrobust predict`` read novelty over each cell's 15 nearest cells in
the PCA of the query's own log-normalised expression (``tl._novelty``). Fitting that PCA
holds the query's non-zeros of its 2,000 most variable genes and arpack's Lanczos vectors
for every cell. Above ``NEIGHBOURHOOD_FIT_CELLS`` cells it is now fitted on a seeded sample
and every cell is projected on it, chunk by chunk.

The query is built from a real dataset: cells drawn with replacement, each count thinned
binomially (p 0.8) so that no two cells are equal, written with ``write_h5ad`` and read
with ``backed="r"``. For each cell count and each fit (every cell / the default sample),
a fresh process runs the neighbourhood step alone (the query is written by another, so
that no process's peak carries the whole matrix) (PCA, nearest cells, median of random
novelty scores) and reports its seconds, its peak RSS, and how often a cell's 14 nearest
other cells share its type (the quality of the neighbourhoods).

On such resampled queries every cell has copies of its source cell nearby, so the
same-type share is near 1 for any fit; it guards against a broken projection, not a
subtle one (the tests compare fits on real cells).

    .venv/bin/python benchmarks/neighbourhood_memory.py --data ../shared/data/pancreas_endocrinogenesis_bastidas.h5ad \
        --cells 150000 300000 --out benchmarks/results/neighbourhood_memory_bastidas.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FITS = {"every_cell": None, "sample": "default"}


def write_query(data: Path, path: Path, n_cells: int, labels_key: str, seed: int = 0) -> None:
    """``n_cells`` cells of ``data`` drawn with replacement, counts thinned binomially (p 0.8)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    source = ad.read_h5ad(data)
    x = sp.csr_matrix(source.X)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(source.n_obs, n_cells, replace=True))
    blocks = []
    for start in range(0, n_cells, 20_000):
        block = x[picks[start : start + 20_000]].astype(np.float32)
        block.data = rng.binomial(block.data.astype(np.int64), 0.8).astype(np.float32)
        block.eliminate_zeros()
        blocks.append(block)
    obs = pd.DataFrame(
        {labels_key: source.obs[labels_key].astype(str).to_numpy()[picks]},
        index=[f"c{i}" for i in range(n_cells)],
    )
    ad.AnnData(sp.vstack(blocks, format="csr"), obs=obs, var=source.var[[]]).write_h5ad(path)


def _child(path: str, fit: str, labels_key: str) -> None:
    """Run the neighbourhood step on the backed query and print its figures as JSON."""
    import anndata as ad

    from scrobust_sc.tl import _novelty

    backed = ad.read_h5ad(path, backed="r")
    types = backed.obs[labels_key].to_numpy()
    max_fit_cells = None if fit == "every_cell" else _novelty.NEIGHBOURHOOD_FIT_CELLS
    novelty = np.random.default_rng(0).uniform(0, 2, backed.n_obs)
    start = time.perf_counter()
    pcs = _novelty.neighbourhood_space(backed.X, input_is_log=False, max_fit_cells=max_fit_cells)
    near = _novelty.nearest_cells(pcs, _novelty.DEFAULT_NOVELTY_NEIGHBORS)
    _novelty.neighbourhood_median(novelty, near)
    seconds = time.perf_counter() - start
    others = np.array([row[row != i][: near.shape[1] - 1] for i, row in enumerate(near)])
    same_type = float((types[others] == types[:, None]).mean())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": round(seconds, 1), "peak_rss_gib": round(rss, 3), "same_type_neighbours": same_type}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "neighbourhood_memory.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--write", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return
    if args.write:
        write_query(args.data, Path(args.write[0]), int(args.write[1]), args.labels_key)
        return
    from scrobust_sc.tl._novelty import NEIGHBOURHOOD_FIT_CELLS

    env = {**os.environ, **{k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_cells in args.cells:
            path = Path(tmp) / f"query_{n_cells}.h5ad"
            # written by a child: Linux counts the parent's resident memory at ``exec`` in a
            # child's ``ru_maxrss``, so the parent must never hold the query itself
            writer = [sys.executable, __file__, "--data", str(args.data), "--labels-key", args.labels_key]
            subprocess.run([*writer, "--write", str(path), str(n_cells)], env=env, check=True)
            for fit in FITS:
                command = [
                    sys.executable,
                    __file__,
                    "--data",
                    str(args.data),
                    "--child",
                    str(path),
                    fit,
                    args.labels_key,
                ]
                result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                row = {"cells": n_cells, "fit": fit, **json.loads(result.stdout.strip().splitlines()[-1])}
                print(row, flush=True)
                rows.append(row)
            path.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "data": args.data.name,
                "fit_cells": NEIGHBOURHOOD_FIT_CELLS,
                "threads": args.threads,
                "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
