"""``scrobust predict --backed``: a query annotated from disk, with peak RSS against loading it whole.

Writes synthetic sparse counts (cells x 20,000 genes, ~1% non-zeros, the generator of
``backed_inference.py``, rewritten by ``write_h5ad``) for each cell count, trains a small model on 2,000 cells of the
first file (random labels of 4 types, no pre-training, 1 epoch: speed and memory do not
depend on what the weights learnt), and runs the command line's ``predict`` on each file
with and without ``--backed`` (and backed with each cell's own novelty,
``--modes backed_own_novelty``), each run in a fresh process so that its peak RSS is its own.
Also measures anndata's own ``write_h5ad`` of the backed file, the step ``--backed``
replaces with a file copy.

    .venv/bin/python benchmarks/backed_cli.py --cells 20000 100000
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

sys.path.insert(0, str(Path(__file__).parent))

from backed_inference import DENSITY, N_GENES, write_synthetic  # noqa: E402

#: ``scrobust predict`` flags of each measured mode.
MODES = {
    "backed": ["--backed"],
    "in_memory": [],
    "backed_own_novelty": ["--backed", "--novelty-neighbors", "0"],  # each cell's own novelty: no neighbourhoods
}


def write_plain_synthetic(path: Path, n_cells: int) -> None:
    """``backed_inference.write_synthetic``'s cells, rewritten by ``write_h5ad`` as users' files are.

    The layout of the file matters to the memory of reading it backed: HDF5 chunks of 1,024
    values (what appending to an empty anndata dataset gave before ``write_synthetic`` set
    its own) held 0.74 GiB in HDF5 after 100,000 of these cells were read, ``write_h5ad``'s
    (~20,000 values) 0.02 GiB.
    """
    import anndata as ad

    appended = path.with_suffix(".appended.h5ad")
    write_synthetic(appended, n_cells)
    ad.read_h5ad(appended).write_h5ad(path)
    appended.unlink()


def train_model(data: Path, folder: Path, threads: int) -> None:
    """A fine-tuned model over the synthetic genes, saved to ``folder``."""
    import anndata as ad
    import numpy as np
    import scvi
    import torch

    from scrobust_sc.tl import fit_annotator

    scvi.settings.seed = 0
    torch.set_num_threads(threads)
    reference = ad.read_h5ad(data, backed="r")[:2000].to_memory()
    reference.obs["cell_type"] = np.random.default_rng(0).choice(list("ABCD"), reference.n_obs)
    model = fit_annotator(reference, "cell_type", pretrain=False, train_kwargs={"max_epochs": 1})
    model.save(folder, overwrite=True)


def _child(argv: list[str]) -> None:
    """Run one step in this process and print its seconds and peak RSS.

    Every step runs in a child, the parent only starts them: Linux carries a process's
    resident memory at ``exec`` into the child's ``ru_maxrss``, so a parent that had
    trained a model would set a floor under every child's peak.
    """
    step, rest = argv[0], argv[1:]
    start = time.perf_counter()
    if step == "synthetic":
        write_plain_synthetic(Path(rest[0]), int(rest[1]))
    elif step == "train":
        train_model(Path(rest[0]), Path(rest[1]), int(rest[2]))
    elif step == "write":  # anndata's own write of the backed file
        import anndata as ad

        ad.read_h5ad(rest[0], backed="r").write_h5ad(rest[1])
    else:
        from scrobust_sc.cli import main

        code = main(rest)
        if code:
            raise SystemExit(code)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps({"seconds": round(seconds, 1), "peak_rss_gib": round(rss, 3)}), flush=True)


def _measure(step: str, args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, __file__, "--child", step, *args], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"{step} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--folder", default="/tmp/scrobust_backed_cli")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["backed", "in_memory"], choices=sorted(MODES))
    parser.add_argument("--no-anndata-write", dest="anndata_write", action="store_false")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "backed_cli.json"))
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {n: folder / f"synthetic_{n}.h5ad" for n in args.cells}
    for n, path in files.items():
        if not path.exists():
            _measure("synthetic", [str(path), str(n)], args.threads)
    model = folder / "model"
    _measure("train", [str(files[min(files)]), str(model), str(args.threads)], args.threads)
    rows = []
    for n, path in files.items():
        out = folder / f"annotated_{n}.h5ad"
        for mode in args.modes:
            cli = ["predict", "--model", str(model), "--query", str(path), "--out", str(out), *MODES[mode]]
            rows.append({"n_cells": n, "mode": mode, **_measure("predict", cli, args.threads)})
            print(rows[-1], flush=True)
        if args.anndata_write:
            write = _measure("write", [str(path), str(out)], args.threads)
            rows.append({"n_cells": n, "mode": "anndata write_h5ad of the backed file", **write})
            print(rows[-1], flush=True)
        out.unlink(missing_ok=True)
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
        },
        "files": {str(n): {"genes": N_GENES, "density": DENSITY, "bytes": p.stat().st_size} for n, p in files.items()},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
