import importlib
import pkgutil
import subprocess
import sys

import anndata as ad
import pandas as pd
import pytest

import scrobust_sc as scrobust
from scrobust_sc.cli import build_parser, main


@pytest.fixture
def files(small_pbmc, tmp_path):
    ref, query = small_pbmc[:150].copy(), small_pbmc[150:].copy()
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "query.h5ad")
    return tmp_path


def test_cli_train_predict_embed_end_to_end(files):
    d = files
    assert (
        main(
            [
                "train",
                "--reference",
                str(d / "ref.h5ad"),
                "--labels-key",
                "cell_type",
                "--out",
                str(d / "m"),
                "--max-steps",
                "4",
                "--max-epochs",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--model",
                str(d / "m"),
                "--query",
                str(d / "query.h5ad"),
                "--out",
                str(d / "a.h5ad"),
                "--csv",
                str(d / "a.csv"),
            ]
        )
        == 0
    )
    annotated = ad.read_h5ad(d / "a.h5ad")
    assert "scrobust_label" in annotated.obs
    table = pd.read_csv(d / "a.csv", index_col=0)
    assert list(table.columns) == ["scrobust_label", "scrobust_confidence"] and len(table) == annotated.n_obs
    assert main(["embed", str(d / "query.h5ad"), "--model", str(d / "m"), "--out", str(d / "e.h5ad")]) == 0
    assert ad.read_h5ad(d / "e.h5ad").obsm["X_scrobust"].shape[0] == annotated.n_obs


def test_cli_annotate_from_reference_and_pretrain(files):
    d = files
    assert (
        main(
            [
                "annotate",
                "--reference",
                str(d / "ref.h5ad"),
                "--labels-key",
                "cell_type",
                "--query",
                str(d / "query.h5ad"),
                "--out",
                str(d / "b.h5ad"),
                "--max-steps",
                "0",
                "--max-epochs",
                "1",
            ]
        )
        == 0
    )
    assert main(["pretrain", str(d / "ref.h5ad"), "--out", str(d / "p"), "--max-steps", "3"]) == 0
    assert (d / "p" / "model.json").exists()
    args = ["--query", str(d / "query.h5ad"), "--out", str(d / "c.h5ad"), "--max-steps", "2", "--max-epochs", "1"]
    reference = ["--reference", str(d / "ref.h5ad"), "--labels-key", "cell_type"]
    assert main(["annotate", *reference, *args, "--pretrain-on-query"]) == 0
    assert ad.read_h5ad(d / "c.h5ad").uns["scrobust"]["params"]["pretrain_on_query"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "missing.h5ad", "--model", "m", "--out", "x.h5ad"], "input file not found"),
        (["train", "--reference", "{d}/ref.h5ad", "--labels-key", "nope", "--out", "{d}/m2"], "labels column 'nope'"),
        (["predict", "--model", "{d}/nomodel", "--query", "{d}/query.h5ad", "--out", "{d}/x.h5ad"], "No model folder"),
    ],
)
def test_cli_bad_input_is_one_clear_line(files, capsys, argv, message):
    argv = [a.format(d=files) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("scrobust ")


def _tiny_model(files):
    """A model folder trained by the CLI on ``files``'s reference in seconds (no pre-training, 1 epoch)."""
    model = files / "m"
    argv = ["train", "--reference", str(files / "ref.h5ad"), "--labels-key", "cell_type", "--out", str(model)]
    assert main([*argv, "--max-steps", "0", "--max-epochs", "1"]) == 0
    return model


def test_cli_no_gene_overlap(files, small_pbmc, capsys):
    q = ad.read_h5ad(files / "query.h5ad")
    q.var_names = [f"X{i}" for i in range(q.n_vars)]
    q.write_h5ad(files / "bad.h5ad")
    _tiny_model(files)
    capsys.readouterr()
    assert (
        main(
            ["predict", "--model", str(files / "m"), "--query", str(files / "bad.h5ad"), "--out", str(files / "x.h5ad")]
        )
        == 2
    )
    assert "gene" in capsys.readouterr().err


def test_the_module_entry_point_prints_help_without_importing_the_training_stack():
    """``scrobust --help`` answers at once: scvi-tools, Lightning and torch load on first use (~12 s)."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['scrobust', '--help']\n"
        "try:\n    runpy.run_module('scrobust_sc.cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('scvi', 'torch', 'lightning', 'scanpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: scrobust" in out.stdout, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout.strip().splitlines()[-1]


def test_the_package_names_its_lazily_loaded_modules():
    import scrobust_sc
    from scrobust_sc.model import SCRobust

    assert scrobust_sc.SCRobust is SCRobust and callable(scrobust_sc.tl.annotate)
    # every public subpackage, also where nothing imported it before (as in a fresh process)
    subpackages = [m.name for m in pkgutil.iter_modules(scrobust_sc.__path__) if m.ispkg and not m.name.startswith("_")]
    assert {"train", "module", "tl"} <= set(subpackages)
    for name in subpackages:
        assert scrobust_sc.__getattr__(name) is importlib.import_module(f"scrobust_sc.{name}"), name
    assert set(scrobust_sc.__all__) <= set(dir(scrobust_sc))
    with pytest.raises(AttributeError, match="no attribute 'annotate'"):
        scrobust_sc.annotate  # noqa: B018


def test_cli_prints_its_version(capsys):
    import scrobust_sc

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"scrobust {scrobust_sc.__version__}"


def test_cli_help_for_every_subcommand(capsys):
    """In-process: one interpreter start per subcommand took a minute of the suite."""
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert {"pretrain", "train", "annotate", "predict", "embed", "demo", "benchmark"} <= set(subcommands)
    for sub in subcommands:
        with pytest.raises(SystemExit) as exited:
            main([sub, "--help"])
        assert exited.value.code == 0, sub
        assert f"usage: scrobust {sub}" in capsys.readouterr().out, sub


def test_demo_runs_on_bundled_data(tmp_path):
    from scrobust_sc._demo_job import run_demo

    summary = run_demo(tmp_path, max_steps=20)
    assert (tmp_path / "umap.png").stat().st_size > 10_000
    assert ad.read_h5ad(tmp_path / "demo.h5ad").obsm["X_scrobust"].shape == (scrobust.data.pbmc_demo().n_obs, 128)
    assert summary["leiden_clusters"] >= 2


def test_cli_novelty_defaults_are_the_librarys():
    from scrobust_sc.tl._annotate import DEFAULT_NOVELTY_THRESHOLD
    from scrobust_sc.tl._novelty import DEFAULT_NOVELTY_NEIGHBORS

    for command in ("annotate", "predict"):
        args = build_parser().parse_args([command, "--query", "q.h5ad", "--out", "o.h5ad", "--model", "m"])
        assert args.novelty_threshold == DEFAULT_NOVELTY_THRESHOLD
        assert args.novelty_neighbors == DEFAULT_NOVELTY_NEIGHBORS


def test_benchmark_help_names_every_scrobust_option():
    from scrobust_sc.benchmark import SCROBUST_OPTIONS

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["benchmark"]
    help_text = next(a.help for a in sub._actions if "--scrobust-options" in a.option_strings)
    assert all(option in help_text for option in SCROBUST_OPTIONS), help_text


def test_cli_backed_query_gives_the_same_annotation_and_leaves_the_input_alone(tmp_path):
    import hashlib
    import shutil
    from pathlib import Path

    import numpy as np

    fixtures = Path(__file__).parent / "data"
    query = tmp_path / "cells.h5ad"
    shutil.copy(fixtures / "model_v0.1.0_cells.h5ad", query)
    before = hashlib.sha256(query.read_bytes()).hexdigest()
    model = str(fixtures / "model_v0.1.0")
    for flag, name in (([], "in_memory"), (["--backed"], "backed")):
        assert (
            main(["predict", "--model", model, "--query", str(query), "--out", str(tmp_path / f"{name}.h5ad"), *flag])
            == 0
        )
        assert main(["embed", str(query), "--model", model, "--out", str(tmp_path / f"{name}_emb.h5ad"), *flag]) == 0
    assert hashlib.sha256(query.read_bytes()).hexdigest() == before
    loaded, backed = ad.read_h5ad(tmp_path / "in_memory.h5ad"), ad.read_h5ad(tmp_path / "backed.h5ad")
    assert (backed.obs["scrobust_label"] == loaded.obs["scrobust_label"]).all()
    np.testing.assert_allclose(backed.obs["scrobust_novelty"], loaded.obs["scrobust_novelty"], rtol=1e-5)
    assert (backed.X != loaded.X).nnz == 0  # the whole matrix is copied into the output
    np.testing.assert_allclose(
        ad.read_h5ad(tmp_path / "backed_emb.h5ad").obsm["X_scrobust"],
        ad.read_h5ad(tmp_path / "in_memory_emb.h5ad").obsm["X_scrobust"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_cli_backed_refuses_to_write_into_its_input_or_to_pretrain_on_it(tmp_path, capsys):
    import hashlib
    import shutil
    from pathlib import Path

    fixtures = Path(__file__).parent / "data"
    query = tmp_path / "cells.h5ad"
    shutil.copy(fixtures / "model_v0.1.0_cells.h5ad", query)
    before = hashlib.sha256(query.read_bytes()).hexdigest()
    model = str(fixtures / "model_v0.1.0")
    assert main(["predict", "--model", model, "--query", str(query), "--out", str(query), "--backed"]) == 2
    assert "is the --backed input itself" in capsys.readouterr().err
    assert main(["embed", str(query), "--model", model, "--out", str(query), "--backed"]) == 2
    assert "is the --backed input itself" in capsys.readouterr().err
    args = ["annotate", "--reference", str(query), "--labels-key", "cell_type_coarse", "--query", str(query)]
    assert main([*args, "--out", str(tmp_path / "o.h5ad"), "--pretrain-on-query", "--backed"]) == 2
    assert "drop --backed" in capsys.readouterr().err
    assert hashlib.sha256(query.read_bytes()).hexdigest() == before


def test_cli_refuses_bad_outputs_before_any_work(files, capsys, monkeypatch):
    from pathlib import Path

    import scrobust_sc.tl as tl

    d = files
    model = str(Path(__file__).parent / "data" / "model_v0.1.0")
    query = str(Path(__file__).parent / "data" / "model_v0.1.0_cells.h5ad")

    def no_work(*args, **kwargs):  # every refusal below must come before any training or annotation
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(tl, "annotate", no_work)
    monkeypatch.setattr(tl, "fit_annotator", no_work)
    monkeypatch.setattr(tl, "embed", no_work)
    (d / "folder").mkdir()
    cases = [
        (["predict", "--model", model, "--query", query, "--out", str(d / "folder")], "is a folder"),
        (["embed", query, "--model", model, "--out", str(d / "folder")], "is a folder"),
        (
            ["predict", "--model", model, "--query", query, "--out", str(d / "o.h5ad"), "--csv", str(d / "folder")],
            "is a folder",
        ),
        (
            [
                "annotate",
                "--model",
                model,
                "--reference",
                query,
                "--labels-key",
                "cell_type_coarse",
                "--query",
                query,
                "--out",
                str(d / "o.h5ad"),
            ],
            "not both",
        ),
        (["train", "--reference", query, "--labels-key", "cell_type_coarse", "--out", model], "--overwrite"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_creates_the_csv_folder_and_reads_the_query_layer(tmp_path):
    from pathlib import Path

    import numpy as np
    import scanpy as sc

    fixtures = Path(__file__).parent / "data"
    model = str(fixtures / "model_v0.1.0")
    cells = ad.read_h5ad(fixtures / "model_v0.1.0_cells.h5ad")
    cells.layers["counts"] = cells.X.copy()
    sc.pp.normalize_total(cells)
    sc.pp.log1p(cells)
    cells.write_h5ad(tmp_path / "log.h5ad")
    out, csv = tmp_path / "a.h5ad", tmp_path / "new" / "labels.csv"
    argv = ["predict", "--model", model, "--query", str(tmp_path / "log.h5ad"), "--out", str(out), "--csv", str(csv)]
    assert main([*argv, "--layer", "counts"]) == 0
    assert len(pd.read_csv(csv, index_col=0)) == cells.n_obs
    expected = scrobust.SCRobust.load(model).predict_proba(ad.read_h5ad(fixtures / "model_v0.1.0_cells.h5ad"))
    np.testing.assert_allclose(
        ad.read_h5ad(out).obsm["scrobust_probabilities"], expected.to_numpy(), rtol=1e-5, atol=1e-6
    )
    assert main([*argv, "--layer", "missing"]) == 2


@pytest.mark.parametrize("flags", [["--pretrain-on-query"], ["--max-epochs", "3"], ["--max-steps", "7"]])
def test_cli_annotate_with_a_saved_model_refuses_training_options(files, capsys, flags):
    """Found by the stop-35 docs review: they were accepted and silently ignored (the model is not trained)."""
    model = _tiny_model(files)
    argv = ["annotate", "--model", str(model), "--query", str(files / "query.h5ad"), "--out", str(files / "a.h5ad")]
    assert main([*argv, *flags]) == 2
    assert "not trained again" in capsys.readouterr().err
    assert not (files / "a.h5ad").exists()


def test_cli_predict_offers_no_training_or_overwrite_options(capsys):
    parser = build_parser()
    base = ["predict", "--model", "m", "--query", "q.h5ad", "--out", "o.h5ad"]
    parser.parse_args(base)  # valid without them
    for flag in (["--preset", "cpu"], ["--max-steps", "3"], ["--atac-values", "binary"], ["--overwrite"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *flag])
    assert "--overwrite" not in build_parser().parse_args(["annotate", "--query", "q", "--out", "o"]).__dict__


def test_cli_predict_reads_x_of_a_query_for_a_model_set_up_on_a_layer(files, capsys):
    """Found by review: a model trained with --layer counts could not read a query's counts in X."""
    import scanpy as sc

    reference = ad.read_h5ad(files / "ref.h5ad")
    reference.layers["counts"] = reference.X.copy()
    sc.pp.normalize_total(reference)
    sc.pp.log1p(reference)
    reference.write_h5ad(files / "ref_log.h5ad")
    model, query = str(files / "m"), str(files / "query.h5ad")
    train = ["train", "--reference", str(files / "ref_log.h5ad"), "--labels-key", "cell_type", "--out", model]
    assert main([*train, "--layer", "counts", "--max-steps", "0", "--max-epochs", "1"]) == 0
    argv = ["--model", model, "--query", query, "--out", str(files / "a.h5ad")]
    capsys.readouterr()
    assert main(["predict", *argv]) == 2
    assert "--layer X" in capsys.readouterr().err
    assert main(["predict", *argv, "--layer", "X"]) == 0
    assert main(["annotate", *argv, "--layer", "X"]) == 0
    assert ad.read_h5ad(files / "a.h5ad").obs["scrobust_label"].notna().all()


def test_cli_reads_gene_symbols_of_the_query_and_the_reference(files, capsys):
    """Found by review: the no-overlap error said to pass gene symbols, which only `pretrain` took."""
    for name in ("ref", "query"):
        cells = ad.read_h5ad(files / f"{name}.h5ad")
        cells.var["symbol"] = cells.var_names.astype(str)
        cells.var_names = [f"ENSG{i:011d}" for i in range(cells.n_vars)]
        cells.write_h5ad(files / f"{name}_ids.h5ad")
    model, ids = str(files / "m"), str(files / "query_ids.h5ad")
    train = ["train", "--reference", str(files / "ref_ids.h5ad"), "--labels-key", "cell_type", "--out", model]
    assert main([*train, "--gene-symbols", "symbol", "--max-steps", "0", "--max-epochs", "1"]) == 0
    assert scrobust.SCRobust.load(model).gene_names_[0] == ad.read_h5ad(files / "ref.h5ad").var_names[0]
    other = str(files / "other")
    assert main(["train", *train[1:5], "--out", other, "--max-steps", "0", "--max-epochs", "1"]) == 0
    out = ["--out", str(files / "a.h5ad")]
    capsys.readouterr()
    assert main(["predict", "--model", other, "--query", str(files / "query.h5ad"), *out]) == 2
    assert "--gene-symbols" in capsys.readouterr().err
    argv = ["--model", model, "--query", ids, *out, "--gene-symbols", "symbol"]
    assert main(["predict", *argv]) == 0
    assert main(["annotate", *argv]) == 0
    assert main(["embed", ids, "--model", model, *out, "--gene-symbols", "symbol"]) == 0
    assert ad.read_h5ad(files / "a.h5ad").obsm["X_scrobust"].shape[0] == ad.read_h5ad(ids).n_obs


def test_cli_annotate_reference_reads_gene_symbols_of_the_query_alone(files):
    """Found by review: --gene-symbols with --reference also required the column in the reference."""
    query = ad.read_h5ad(files / "query.h5ad")
    query.var["symbol"] = query.var_names.astype(str)
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    query.write_h5ad(files / "query_ids.h5ad")
    argv = ["annotate", "--reference", str(files / "ref.h5ad"), "--labels-key", "cell_type"]
    argv += ["--query", str(files / "query_ids.h5ad"), "--out", str(files / "a.h5ad"), "--gene-symbols", "symbol"]
    assert main([*argv, "--max-steps", "0", "--max-epochs", "1"]) == 0
    assert ad.read_h5ad(files / "a.h5ad").obs["scrobust_label"].notna().all()
