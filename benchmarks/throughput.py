"""Throughput and peak memory of pre-training, fine-tuning and embedding (issue: speed and scale).

Each measurement runs in a fresh process (so its peak RSS is its own): cells/s over timed
optimiser steps (after warm-up steps) or over a whole inference pass, peak RSS, the
achieved FLOP/s from the tokens actually computed, and the fraction of the fp32 matmul
peak measured in the same run.

    .venv/bin/python benchmarks/throughput.py --data ../shared/data/zheng_sorted_pbmc_fasttopics.h5ad
    .venv/bin/python benchmarks/throughput.py --synthetic           # 5,000 x 20,000, 5% non-zeros
    .venv/bin/python benchmarks/throughput.py --compile --configs default   # torch.compile the encoder
    python benchmarks/throughput.py --accelerator gpu --bf16 --configs paper paper-large-batch  # a CUDA GPU
    .venv/bin/python benchmarks/throughput.py --reference --configs paper   # the published encoder too

Configurations: ``paper`` (d 512, 8 heads, 1 layer; views of 200 genes, batch 128;
fine-tuning 800 genes, batch 64; embeddings of 1,000 genes) and ``default`` (the package
defaults). The published implementation's figures on a machine like this one (from the
issue, same sizes): pre-training 4.3 cells/s, fine-tuning 2.3 cells/s (peak RSS 10 GiB),
embeddings 4.6 cells/s. ``--reference`` also times, in the same run and on the same data,
a re-implementation of the published encoder's costs (``published_reference.py``) for each
``paper`` row, so that the speed-ups are ratios measured together. ``paper-large-batch``
keeps the paper's model and gene counts with 8x larger batches (pre-training 1,024,
fine-tuning 512, embeddings 4,096), for GPUs.

On a GPU (``--accelerator gpu``) the matmul peak is an 8,192 x 8,192 product on the GPU,
timings wait for the GPU to finish, and each row also gives the GPU's peak allocated memory.
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

#: Cells/s of the published implementation, measured as issue 6 reports (2 threads): on
#: 700 real cells (765 genes), and on the 5,000 x 20,000 synthetic matrix (no embedding figure).
REFERENCE = {"pretrain": 4.3, "finetune": 2.3, "embed": 4.6}
REFERENCE_SYNTHETIC = {"pretrain": 5.0, "finetune": 1.5}


def reference_cells_per_s(synthetic: bool) -> dict[str, float]:
    """The reference implementation's cells/s on the same kind of data."""
    return dict(REFERENCE_SYNTHETIC if synthetic else REFERENCE)


def speedup(cells_per_s: float, phase: str, reference: dict[str, float]) -> float | None:
    """Ratio to the reference's cells/s for ``phase``; ``None`` without a reference figure."""
    return cells_per_s / reference[phase] if phase in reference else None


CONFIGS = {
    "paper": {
        "model": {"preset": "paper", "n_view_genes": 200},
        "pretrain": {"batch_size": 128},
        "finetune": {"batch_size": 64, "n_genes": 800},
        "embed": {"n_genes": 1000, "batch_size": 256},
    },
    "default": {"model": {}, "pretrain": {}, "finetune": {}, "embed": {}},
    "paper-large-batch": {
        "model": {"preset": "paper", "n_view_genes": 200},
        "pretrain": {"batch_size": 1024},
        "finetune": {"batch_size": 512, "n_genes": 800},
        "embed": {"n_genes": 1000, "batch_size": 4096},
    },
}


def matmul_peak(threads: int, dtype: str = "float32", n: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """Achieved GFLOP/s of an n x n matmul (the machine's practical peak) on ``device``."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    b = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def _synchronize(device: str) -> None:
    """Wait for the GPU's queued work (timings on a GPU); nothing on the CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def encoder_flops(
    tokens: np.ndarray, d: int, n_layers: int, training: bool, executed: bool = True, n_heads: int = 8
) -> float:
    """Matmul FLOPs of the encoder over sequences of ``tokens`` tokens (CLS included), x3 to train.

    ``executed=False``: the issue's count for the published encoder, every layer in full,
    24 L d^2 + 4 L^2 d per layer. ``executed=True``: what this package computes: the value
    MLP (64 L d), full layers but the last, whose CLS query alone is read against the
    tokens with the key and value projections folded into it (4 L d heads for the scores
    and the weighted sum) plus the CLS's own projections and feed-forward (24 d^2).
    """
    length = tokens.astype(float)
    full = 24 * length * d**2 + 4 * length**2 * d
    if executed:
        per = 64 * length * d + (n_layers - 1) * full + 4 * length * d * n_heads + 24 * d**2
    else:
        per = n_layers * full
    return float(per.sum() * (3 if training else 1))


def reference_flops_per_cell(phase: str, n_genes: int, d: int, n_layers: int) -> float:
    """Matmul FLOPs per cell of the published encoder: every sequence padded to ``n_genes`` + 1.

    Pre-training encodes two views a cell; embedding runs forward only.
    """
    tokens = np.full(2 if phase == "pretrain" else 1, n_genes + 1)
    return encoder_flops(tokens, d, n_layers, training=phase != "embed", executed=False)


def synthetic(n_cells: int = 5000, n_genes: int = 20000, density: float = 0.05, seed: int = 0):
    """Sparse counts with ~density non-zeros, heavy-tailed genes, 5 fake types."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    gene_rate = rng.gamma(0.6, 1.0, n_genes)
    gene_rate /= gene_rate.mean()
    nnz_per_cell = rng.poisson(density * n_genes, n_cells)
    rows, cols = [], []
    p = gene_rate / gene_rate.sum()
    for i, k in enumerate(nnz_per_cell):
        genes = rng.choice(n_genes, size=min(k, n_genes), replace=False, p=p)
        rows.append(np.full(genes.size, i))
        cols.append(genes)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    values = rng.geometric(0.5, rows.size).astype(np.float32)
    x = sp.csr_matrix((values, (rows, cols)), shape=(n_cells, n_genes))
    obs = pd.DataFrame({"cell_type": rng.choice([f"type{i}" for i in range(5)], n_cells)})
    obs.index = obs.index.astype(str)
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


def _tokens_per_batch(adata, n: int, batch_size: int, n_batches: int, seed: int = 0) -> np.ndarray:
    """Tokens per sequence (CLS + each batch's longest real input) for random batches."""
    nnz = np.diff(adata.X.indptr) if hasattr(adata.X, "indptr") else (np.asarray(adata.X) > 0).sum(1)
    per_cell = np.minimum(nnz, n)
    rng = np.random.default_rng(seed)
    lengths = [per_cell[rng.choice(per_cell.size, batch_size, replace=False)].max() + 1 for _ in range(n_batches)]
    return np.repeat(np.asarray(lengths), batch_size)


class _StepTimer:
    """Lightning callback timing optimiser steps after a warm-up."""

    def __init__(self, warmup: int, device: str = "cpu"):
        from lightning.pytorch.callbacks import Callback

        outer = self

        class _Callback(Callback):
            def on_train_batch_start(self, trainer, module, batch, idx):
                if trainer.global_step == warmup:
                    _synchronize(device)
                    outer.start = time.perf_counter()
                    outer.cells = 0

            def on_train_batch_end(self, trainer, module, outputs, batch, idx):
                if outer.start is not None:
                    _synchronize(device)
                    outer.cells += next(iter(batch.values())).shape[0]
                    outer.end = time.perf_counter()

        self.start, self.end, self.cells = None, None, 0
        self.callback = _Callback()

    @property
    def cells_per_s(self) -> float:
        return self.cells / (self.end - self.start)


def measure(
    phase: str,
    config: str,
    data: str,
    threads: int,
    steps: int,
    warmup: int,
    bf16: bool,
    compiled: bool = False,
    accelerator: str = "cpu",
) -> dict:
    """One measurement in this process; returns its figures."""
    import logging

    import anndata as ad
    import scvi
    import torch

    import scrobust_sc as scrobust

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    scvi.settings.num_threads = threads
    scvi.settings.seed = 0
    torch.set_num_threads(threads)
    adata = synthetic() if data == "synthetic" else ad.read_h5ad(data)
    labels_key = "cell_type" if phase == "finetune" else None
    scrobust.SCRobust.setup_anndata(adata, labels_key=labels_key)
    cfg = CONFIGS[config]
    model = scrobust.SCRobust(adata, **cfg["model"])
    if compiled:
        model.compile_encoder()
    module = model.module
    d, n_layers = model.init_params_["non_kwargs"]["d_model"], module.encoder.n_layers
    heads = module.encoder.blocks[-1].n_heads
    device = "cuda" if accelerator == "gpu" else "cpu"
    quiet = {"enable_progress_bar": False, "enable_model_summary": False, "logger": None, "accelerator": accelerator}
    if bf16:
        quiet["precision"] = "bf16-mixed"
    torch.set_num_threads(threads)
    result = {"phase": phase, "config": config, "data": Path(data).stem, "n_cells": adata.n_obs}
    result |= {"n_genes": adata.n_vars, "nnz": int(adata.X.nnz), "d_model": d, "n_layers": n_layers, "bf16": bf16}
    result |= {"compiled": compiled, "accelerator": accelerator}
    if phase in ("pretrain", "finetune"):
        timer = _StepTimer(warmup, device)
        kwargs = {"max_steps": warmup + steps, "callbacks": [timer.callback], **quiet}
        if phase == "pretrain":
            batch = cfg["pretrain"].get("batch_size", 64)
            model.pretrain(batch_size=batch, validation_size=0.0, **kwargs)
            n = module.n_view_genes
            tokens = np.concatenate([_tokens_per_batch(adata, n, batch, steps, seed) for seed in (1, 2)])
            flops = {e: encoder_flops(tokens, d, n_layers, True, e, heads) / (batch * steps) for e in (True, False)}
        else:
            batch = cfg["finetune"].get("batch_size", 32)
            n = cfg["finetune"].get("n_genes", 800)
            model.train(max_epochs=1000, batch_size=batch, n_genes=n, validation_size=0.0, **kwargs)
            tokens = _tokens_per_batch(adata, n, batch, steps)
            flops = {e: encoder_flops(tokens, d, n_layers, True, e, heads) / (batch * steps) for e in (True, False)}
        result |= {"batch_size": batch, "genes_per_cell": n, "cells_per_s": timer.cells_per_s, "timed_steps": steps}
        result["flops_per_cell"], result["published_flops_per_cell"] = flops[True], flops[False]
    else:
        n = cfg["embed"].get("n_genes", 1000)
        batch = cfg["embed"].get("batch_size", 256)
        if device == "cuda":
            model.module.to(device)
        for _ in range(1 + warmup * compiled):  # warm-up (and compilation)
            model.get_latent_representation(indices=np.arange(min(256, adata.n_obs)), n_genes=n)
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            model.get_latent_representation(n_genes=n, batch_size=batch)  # numpy out: the GPU has finished
        seconds = time.perf_counter() - start
        tokens = _tokens_per_batch(adata, n, batch, int(np.ceil(adata.n_obs / batch)))[: adata.n_obs]
        result |= {"batch_size": batch, "genes_per_cell": n, "cells_per_s": adata.n_obs / seconds}
        result["flops_per_cell"] = encoder_flops(tokens, d, n_layers, False, True, heads) / adata.n_obs
        result["published_flops_per_cell"] = encoder_flops(tokens, d, n_layers, False, False, heads) / adata.n_obs
    result["gflops_per_s"] = result["flops_per_cell"] * result["cells_per_s"] / 1e9
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device == "cuda":
        result["peak_gpu_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/zheng_sorted_pbmc_fasttopics.h5ad")
    parser.add_argument("--synthetic", action="store_true", help="5,000 x 20,000 synthetic counts, 5%% non-zeros")
    parser.add_argument("--configs", nargs="+", default=["paper", "default"])
    parser.add_argument("--phases", nargs="+", default=["pretrain", "finetune", "embed"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (model.compile_encoder)")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="gpu: a CUDA GPU")
    parser.add_argument(
        "--reference", action="store_true", help="time the re-implemented published encoder too (paper rows, CPU)"
    )
    parser.add_argument("--reference-steps", type=int, default=3, help="its timed steps (about 30 s each)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", nargs=2, metavar=("PHASE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = measure(
            *args.child, args.data, args.threads, args.steps, args.warmup, args.bf16, args.compile, args.accelerator
        )
        print("RESULT " + json.dumps(figures), flush=True)
        return
    import torch

    device = "cuda" if args.accelerator == "gpu" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--accelerator gpu: torch sees no CUDA GPU here.")
    size = 8192 if device == "cuda" else 2048
    peak = {"fp32": matmul_peak(args.threads, n=size, device=device)}
    if args.bf16:  # minutes on CPUs without native bf16, so only when asked
        peak["bf16"] = matmul_peak(args.threads, "bfloat16", n=size, device=device)
    reference = reference_cells_per_s(args.synthetic)
    result = {"machine": _machine(args, torch), "matmul_peak_gflops": peak, "reference_cells_per_s": reference}
    result["rows"] = []
    stem = "synthetic" if args.synthetic else Path(args.data).stem
    path = Path(args.out) / result_name(stem, args.accelerator, args.bf16, args.compile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.synthetic:  # made once, read by each measurement's process
            data = str(Path(tmp) / "synthetic.h5ad")
            synthetic().write_h5ad(data)
        for config in args.configs:
            for phase in args.phases:
                row = _measure_in_child(args, phase, config, data, peak, reference)
                if args.reference and config == "paper" and args.accelerator == "cpu":
                    row["reference_same_run"] = _reference_in_child(args, phase, data)
                    ref = row["reference_same_run"]
                    flops = reference_flops_per_cell(phase, ref["genes_per_cell"], ref["d_model"], ref["n_layers"])
                    ref["fraction_of_matmul_peak"] = flops * ref["cells_per_s"] / 1e9 / peak["fp32"]
                    row["speedup_vs_reference_same_run"] = row["cells_per_s"] / row["reference_same_run"]["cells_per_s"]
                    print(json.dumps(row["reference_same_run"]), flush=True)
                result["rows"].append(row)
                path.write_text(json.dumps(result, indent=1))  # after each row: a run cut short keeps its rows
    print(f"wrote {path}")


def result_name(data: str, accelerator: str, bf16: bool, compiled: bool) -> str:
    """The JSON file of a run: GPU, bf16 and compiled runs each get their own."""
    suffix = ("_gpu" if accelerator == "gpu" else "") + ("_bf16" if bf16 else "") + ("_compiled" if compiled else "")
    return f"throughput_{data}{suffix}.json"


def _measure_in_child(args, phase: str, config: str, data: str, peak: dict, reference: dict) -> dict:
    """One measurement in a fresh process (its own peak RSS), with its ratios to the peak and reference."""
    cmd = [sys.executable, __file__, "--child", phase, config, "--threads", str(args.threads)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--data", data]
    cmd += ["--accelerator", args.accelerator]
    cmd += ["--bf16"] if args.bf16 else []
    cmd += ["--compile"] if args.compile else []
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{phase}/{config} failed")
    row = json.loads(lines[-1][len("RESULT ") :])
    matmul = peak["bf16" if args.bf16 else "fp32"]
    row["fraction_of_matmul_peak"] = row["gflops_per_s"] / matmul
    # the published encoder's FLOPs per cell over this run's time: above 1 where the
    # package skips work the published encoder does, not a kernel's efficiency
    row["published_flops_fraction_of_matmul_peak"] = row["published_flops_per_cell"] * row["cells_per_s"] / 1e9 / matmul
    ratio = speedup(row["cells_per_s"], phase, reference)
    if config == "paper" and ratio is not None and args.accelerator == "cpu":
        row["speedup_vs_reference"] = ratio
    print(json.dumps(row), flush=True)
    return row


def _reference_in_child(args, phase: str, data: str) -> dict:
    """The re-implemented published encoder's figures for ``phase``, in a fresh process."""
    cmd = [sys.executable, str(Path(__file__).parent / "published_reference.py"), "--phase", phase, "--data", data]
    cmd += ["--threads", str(args.threads), "--steps", str(args.reference_steps), "--warmup", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"the published encoder's {phase} failed (exit {done.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def _machine(args, torch) -> dict:
    """The machine a run measured: processor, cores, threads, versions, and the GPU if one was used."""
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if args.accelerator == "gpu":
        machine["gpu"] = torch.cuda.get_device_name()
    return machine


if __name__ == "__main__":
    main()
