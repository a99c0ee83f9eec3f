"""The ``scrobust`` command line: pretrain, train, annotate, embed, predict, benchmark, demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from scrobust_sc import __version__

logger = logging.getLogger("scrobust_sc")


BACKED_HELP = (
    "read the query from disk in chunks (anndata backed='r') instead of loading it: its matrix is never "
    "held whole (except with --gene-symbols, which reads it into memory); the output .h5ad is a copy of the "
    "input file with the annotations added"
)


class CLIError(Exception):
    """A user error reported as one line, exit status 2."""


def _read(path: str, *, backed: bool = False):
    import anndata as ad

    p = Path(path)
    if not p.exists():
        raise CLIError(f"input file not found: {path}")
    try:
        return ad.read_h5ad(p, backed="r" if backed else None)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise CLIError(f"cannot read {path} as .h5ad: {err}") from None


def _quiet_lightning(verbose: bool) -> dict:
    if not verbose:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return {"enable_progress_bar": verbose}


def _load_model(path: str, adata=None):
    from scrobust_sc.model import SCRobust

    try:
        return SCRobust.load(path, adata=adata)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None


def _check_outputs(args, source: str) -> None:
    """Refuse outputs that cannot be written, before any work: a folder given as a file, the backed input."""
    for flag, path in (("--out", args.out), ("--csv", getattr(args, "csv", None))):
        if path is not None and Path(path).is_dir():
            raise CLIError(f"{flag} {path} is a folder; give the file to write")
    if args.backed and Path(args.out).resolve() == Path(source).resolve():  # anndata would append to the input
        raise CLIError(f"--out {args.out} is the --backed input itself; write the annotated copy to another file")


def _check_model_folder(args) -> None:
    """Refuse to train when ``--out`` already holds a model and ``--overwrite`` is not given."""
    from scrobust_sc.model._io import refuse_saved_model

    if not args.overwrite:
        refuse_saved_model(Path(args.out), fix="pass --overwrite to replace it")


def _write_backed(adata, out: Path) -> None:
    """Copy a backed input's file byte for byte, then replace its ``obs``, ``obsm`` and ``uns``.

    ``write_h5ad`` of a backed AnnData reads each array of the matrix whole into memory; a
    file copy and the three annotated elements keep memory to the annotations' size.
    """
    import shutil

    import h5py
    from anndata.io import write_elem

    source = adata.filename
    adata.file.close()
    shutil.copyfile(source, out)
    with h5py.File(out, "r+") as f:
        for key, value in (("obs", adata.obs), ("obsm", dict(adata.obsm)), ("uns", dict(adata.uns))):
            if key in f:
                del f[key]
            write_elem(f, key, value)


def _write(adata, path: str, csv: str | None, key: str = "scrobust") -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if adata.isbacked:
        _write_backed(adata, out)
    else:
        adata.write_h5ad(out)
    logger.info("wrote %s", out)
    if csv:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        cols = [c for c in (f"{key}_label", f"{key}_confidence") if c in adata.obs]
        adata.obs[cols].to_csv(csv)
        logger.info("wrote %s", csv)


def _setup(args, reference=None) -> dict:
    """``modality`` and ``setup_kwargs`` for a model trained from the command line.

    ``--gene-symbols`` names the training data's gene column when ``reference`` (the
    training data, if given) has it; otherwise it names the query's alone.
    """
    setup_kwargs = {"atac_values": args.atac_values}
    if args.gene_symbols is not None and (reference is None or args.gene_symbols in reference.var.columns):
        setup_kwargs["gene_symbols"] = args.gene_symbols
    return {"modality": args.modality or "rna", "setup_kwargs": setup_kwargs}


def _cmd_pretrain(args) -> None:
    from scrobust_sc.model import SCRobust
    from scrobust_sc.tl._annotate import _stop_if_interrupted

    _check_model_folder(args)
    adata = _read(args.data)
    setup = _setup(args)
    SCRobust.setup_anndata(adata, layer=args.layer, modality=setup["modality"], **setup["setup_kwargs"])
    model = SCRobust(adata, preset=args.preset)
    model.pretrain(max_steps=args.max_steps, batch_size=args.batch_size, **_quiet_lightning(args.verbose))
    _stop_if_interrupted(model, "Pre-training")  # nothing saved after Ctrl+C
    model.save(args.out, overwrite=args.overwrite)
    logger.info("saved model to %s", args.out)


def _cmd_train(args) -> None:
    from scrobust_sc.tl import fit_annotator

    _check_model_folder(args)
    adata = _read(args.reference)
    if args.labels_key not in adata.obs.columns:
        raise CLIError(
            f"labels column {args.labels_key!r} not in {args.reference} (obs columns: {list(adata.obs.columns)})"
        )
    quiet = _quiet_lightning(args.verbose)
    model = fit_annotator(
        adata,
        args.labels_key,
        layer=args.layer,
        model_kwargs={"preset": args.preset},
        pretrain_kwargs={"max_steps": args.max_steps, **quiet},
        train_kwargs={"max_epochs": args.max_epochs, **quiet},
        pretrain=args.max_steps != 0,
        **_setup(args),
    )
    model.save(args.out, overwrite=args.overwrite)
    logger.info("saved model to %s", args.out)
    return model


def _cmd_annotate(args) -> None:
    from scrobust_sc import tl

    if args.backed and getattr(args, "pretrain_on_query", False):
        raise CLIError("--pretrain-on-query trains on the query, which needs it in memory: drop --backed")
    if args.model and args.reference:
        raise CLIError("give --model or --reference, not both: a saved model is not trained again")
    if args.model:
        given = [flag for key, (flag, default) in TRAINING_OPTIONS.items() if getattr(args, key, default) != default]
        if given:
            raise CLIError(f"{', '.join(given)} train a model, and a saved --model is not trained again: drop them")
    _check_outputs(args, args.query)
    query = _read(args.query, backed=args.backed)
    quiet = _quiet_lightning(args.verbose)
    if args.model:
        model = _load_model(args.model)
        tl.annotate(
            query,
            model=model,
            layer=args.layer,
            unknown_threshold=args.unknown_threshold,
            novelty_threshold=args.novelty_threshold,
            novelty_neighbors=args.novelty_neighbors or None,
            modality=args.modality,
            gene_symbols=args.gene_symbols,
        )
    else:
        if not args.reference or not args.labels_key:
            raise CLIError("give --model, or --reference with --labels-key")
        reference = _read(args.reference)
        if args.labels_key not in reference.obs.columns:
            raise CLIError(f"labels column {args.labels_key!r} not in {args.reference}")
        tl.annotate(
            query,
            reference=reference,
            labels_key=args.labels_key,
            layer=args.layer,
            unknown_threshold=args.unknown_threshold,
            novelty_threshold=args.novelty_threshold,
            novelty_neighbors=args.novelty_neighbors or None,
            max_epochs=args.max_epochs,
            pretrain_steps=args.max_steps,
            pretrain_on_query=args.pretrain_on_query,
            pretrain_kwargs=quiet,
            train_kwargs=quiet,
            gene_symbols=args.gene_symbols,
            **_setup(args, reference),
        )
    _write(query, args.out, args.csv)


def _cmd_embed(args) -> None:
    from scrobust_sc import tl

    _check_outputs(args, args.data)
    adata = _read(args.data, backed=args.backed)
    model = _load_model(args.model)
    tl.embed(adata, model, n_genes=args.n_genes, gene_symbols=args.gene_symbols)
    _write(adata, args.out, None)


def _cmd_predict(args) -> None:
    args.reference = args.labels_key = None
    _cmd_annotate(args)


#: ``annotate``'s options that train a model, which ``--model`` (a saved model) never does.
TRAINING_OPTIONS = {
    "pretrain_on_query": ("--pretrain-on-query", False),
    "max_epochs": ("--max-epochs", None),
    "max_steps": ("--max-steps", None),
    "preset": ("--preset", "cpu"),
    "atac_values": ("--atac-values", "binary"),
}


def _cmd_benchmark(args) -> None:
    import json

    from scrobust_sc import benchmark

    try:
        options = json.loads(args.scrobust_options)
    except json.JSONDecodeError as err:
        raise CLIError(f"--scrobust-options is not valid JSON: {err}") from None
    try:
        benchmark.check_scrobust_options(options)
    except ValueError as err:
        raise CLIError(f"--scrobust-options: {err}") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.protocol != "ablation":  # the ablation runs its own scRobust variants
        benchmark.check_methods(methods)  # before --out is created
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _quiet_lightning(args.verbose)
    for path in args.data:
        adata = _read(path)
        if args.labels_key not in adata.obs.columns:
            raise CLIError(f"labels column {args.labels_key!r} not in {path} (obs columns: {list(adata.obs.columns)})")
        folds = f"_folds{'-'.join(map(str, args.fold_index))}" if args.fold_index else ""
        name = f"{Path(path).stem}_{args.protocol}{args.tag and '_' + args.tag}{folds}.csv"
        results = benchmark.run_benchmark(
            adata,
            args.labels_key,
            protocol=args.protocol,
            methods=methods,
            n_folds=args.folds,
            folds=args.fold_index,
            repeats=args.repeats,
            seed=args.seed,
            split_key=args.split_key,
            dropout_rates=args.dropout_rates,
            scrobust_options=options,
            peer_features=args.peer_features,
            quick=args.quick,
            dataset=Path(path).stem,
            modality=args.modality,
            on_split=lambda partial, target=out / name: partial.to_csv(target, index=False),
        )
        results.to_csv(out / name, index=False)
        logger.info("wrote %s", out / name)
    benchmark.write_report(out)
    logger.info("wrote %s and plots", out / "summary.md")


def _cmd_demo(args) -> None:
    from scrobust_sc._demo_job import run_demo

    run_demo(Path(args.out), max_steps=args.max_steps, verbose=args.verbose)


GENE_SYMBOLS_HELP = (
    "var column with the gene names to match (e.g. symbols beside Ensembl IDs in var_names), in the query and "
    "in the data a model is trained on, where that has it (default: var_names)"
)
MAX_EPOCHS_HELP = "fine-tuning epochs (default: 20, or more on a reference too small for 500 optimiser steps in 20)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``scrobust`` command."""
    parser = argparse.ArgumentParser(prog="scrobust", description="scRobust cell embeddings and annotation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress bars and Lightning logs")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, *, model=False, saves_model=True, query=False):
        layer_help = (
            "layer of the query holding raw counts (default: where the model reads them; X: the query's X)"
            if query
            else "layer holding raw counts (default: X)"
        )
        p.add_argument("--layer", default=None, help=layer_help)
        p.add_argument("--gene-symbols", default=None, help=GENE_SYMBOLS_HELP)
        if model:
            p.add_argument("--preset", default="cpu", choices=["cpu", "paper"], help="model size")
            p.add_argument("--max-steps", type=int, default=None, help="pre-training steps (0: skip)")
            p.add_argument(
                "--modality", default=None, choices=["rna", "atac"], help="rna (default) or atac: peaks as tokens"
            )
            p.add_argument("--atac-values", default="binary", choices=["binary", "tfidf"], help="atac peak values")
        if saves_model:
            p.add_argument("--overwrite", action="store_true", help="replace an existing output model")

    p = sub.add_parser("pretrain", help="self-supervised pre-training; saves a model folder")
    p.add_argument("data", help="input .h5ad")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--batch-size", type=int, default=64)
    common(p, model=True)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("train", help="pre-train and fine-tune on a labelled reference; saves a model folder")
    p.add_argument("--reference", required=True, help="labelled .h5ad")
    p.add_argument("--labels-key", required=True, help="obs column of cell types")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--max-epochs", type=int, default=None, help=MAX_EPOCHS_HELP)
    common(p, model=True)
    p.set_defaults(func=_cmd_train)

    for name, helptext in (
        ("annotate", "annotate a query (from --model, or trained on --reference)"),
        ("predict", "annotate with a saved model"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--query", required=True, help=".h5ad to annotate")
        p.add_argument("--model", required=name == "predict", default=None, help="saved model folder")
        if name == "annotate":
            p.add_argument("--reference", default=None, help="labelled .h5ad to learn from")
            p.add_argument("--labels-key", default=None, help="obs column of cell types in the reference")
            p.add_argument("--max-epochs", type=int, default=None, help=MAX_EPOCHS_HELP)
            p.add_argument(
                "--pretrain-on-query",
                action="store_true",
                help="pre-train on the query's cells too (without labels); fine-tuning reads the reference only",
            )
        p.add_argument("--out", required=True, help="annotated .h5ad to write")
        p.add_argument("--csv", default=None, help="also write labels and confidences as CSV")
        p.add_argument("--backed", action="store_true", help=BACKED_HELP)
        p.add_argument("--unknown-threshold", type=float, default=None, help="confidence under which a cell is Unknown")
        p.add_argument(
            "--novelty-threshold",
            type=float,
            default=1.0,  # tl.annotate's DEFAULT_NOVELTY_THRESHOLD (not imported: the parser stays light)
            help="novelty above which a cell is Unknown",
        )
        p.add_argument(
            "--novelty-neighbors",
            type=int,
            default=15,  # tl.annotate's DEFAULT_NOVELTY_NEIGHBORS
            help="read novelty as the median over each cell's nearest cells of the query, this many "
            "(0: each cell's own novelty)",
        )
        if name == "predict":  # a saved model: nothing to train, so no training options
            p.add_argument(
                "--modality", default=None, choices=["rna", "atac"], help="the query's modality (default: the model's)"
            )
        common(p, model=name == "annotate", saves_model=False, query=True)
        p.set_defaults(func=_cmd_annotate if name == "annotate" else _cmd_predict)

    p = sub.add_parser("embed", help="write cell embeddings (obsm['X_scrobust'])")
    p.add_argument("data", help="input .h5ad")
    p.add_argument("--model", required=True, help="saved model folder")
    p.add_argument("--out", required=True, help=".h5ad to write")
    p.add_argument("--n-genes", type=int, default=1000)
    p.add_argument("--backed", action="store_true", help=BACKED_HELP)
    p.add_argument("--gene-symbols", default=None, help=GENE_SYMBOLS_HELP)
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("benchmark", help="compare scRobust with peers on the same seeded splits")
    p.add_argument("--data", required=True, nargs="+", help="labelled .h5ad file(s)")
    p.add_argument("--labels-key", default="cell_type", help="obs column of cell types")
    p.add_argument("--protocol", default="cv", choices=["cv", "dropout", "novel", "cross", "ablation"])
    p.add_argument("--methods", default="scrobust,celltypist,scanvi,logreg,knn", help="comma-separated")
    p.add_argument("--folds", type=int, default=5, help="folds of the stratified split")
    p.add_argument(
        "--fold-index",
        type=int,
        nargs="+",
        default=None,
        help="run only these splits; the CSV's name then ends in _folds<i>-<j>",
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-key", default=None, help="obs column to cross (protocol cross), e.g. platform")
    p.add_argument("--dropout-rates", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument(
        "--scrobust-options",
        default="{}",
        help="JSON object: pretrain, pretrain_on_test, model_kwargs, pretrain_kwargs, train_kwargs, setup_kwargs, "
        "novelty_neighbors (null: each cell's own novelty; others refused)",
    )
    p.add_argument("--modality", default="rna", choices=["rna", "atac"], help="genes or peaks")
    p.add_argument("--peer-features", type=int, default=2000, help="HVGs or peaks read by logreg and knn (0: all)")
    p.add_argument("--quick", action="store_true", help="tiny configuration that checks the harness")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    p.add_argument("--out", default="benchmark_results", help="folder for CSVs, summary.md and plots")
    p.set_defaults(func=_cmd_benchmark)

    p = sub.add_parser("demo", help="pre-train on the bundled PBMCs; embeddings, Leiden, UMAP, plots")
    p.add_argument("--out", default="demo_output")
    p.add_argument("--max-steps", type=int, default=2000)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scrobust`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    start = time.perf_counter()
    try:
        args.func(args)
    except CLIError as err:
        print(f"scrobust {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"scrobust {args.command}: error: {err}", file=sys.stderr)
        return 2
    logger.info("scrobust %s finished in %.1f s", args.command, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
