import importlib.util
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_compares_each_dataset_with_its_own_reference_figures():
    throughput = _script("throughput")
    real, synthetic = throughput.reference_cells_per_s(False), throughput.reference_cells_per_s(True)
    assert real == {"pretrain": 4.3, "finetune": 2.3, "embed": 4.6}  # issue 6: 700 real cells
    assert synthetic == {"pretrain": 5.0, "finetune": 1.5}  # issue 6: 5,000 x 20,000 synthetic
    assert throughput.speedup(12.0, "finetune", synthetic) == pytest.approx(8.0)
    assert throughput.speedup(12.0, "embed", synthetic) is None  # no reference figure: no ratio


def test_throughput_runs_on_a_gpu_or_in_bf16_write_files_of_their_own():
    name = _script("throughput").result_name
    names = {name("synthetic", acc, bf16, False) for acc in ("cpu", "gpu") for bf16 in (False, True)}
    assert names == {f"throughput_synthetic{s}.json" for s in ("", "_bf16", "_gpu", "_gpu_bf16")}


def test_hide_labels_hides_exactly_the_given_cells_and_leaves_the_input_alone():
    import numpy as np

    import scrobust_sc as scrobust

    cv = _script("annotation_cv")
    adata = scrobust.data.pbmc_demo()
    before = adata.obs["cell_type"].copy()
    cells = np.arange(0, adata.n_obs, 3)
    work = cv.hide_labels(adata, cells, "cell_type")
    hidden = work.obs["cell_type"].isna().to_numpy()
    assert np.flatnonzero(hidden).tolist() == cells.tolist()
    kept = ~hidden
    assert (work.obs["cell_type"][kept].astype(str) == before[kept].astype(str)).all()
    assert adata.obs["cell_type"].equals(before)
    with pytest.raises(ValueError, match="not a column"):
        cv.hide_labels(adata, cells, "celltype")


def test_cv_results_of_another_seed_do_not_overwrite_seed_zero():
    cv = _script("annotation_cv")
    assert cv.result_name("xin", "default", 0, [0, 1]) == "cv_xin_default_folds0-1.json"
    assert cv.result_name("xin", "default", 2, [0, 1]) == "cv_xin_default_seed2_folds0-1.json"


def test_pretrain_effect_pairs_folds_of_the_same_seed(tmp_path):
    import json

    effect = _script("pretrain_effect")

    def write(tag: str, seed: int, scores: list[float]) -> None:
        rows = [{"method": "scrobust", "fold": k, "f1_macro": s} for k, s in enumerate(scores)]
        name = f"cv_toy_{tag}{f'_seed{seed}' if seed else ''}_folds0-1-2-3-4.json"
        (tmp_path / name).write_text(json.dumps({"rows": rows}))

    write("without", 0, [0.5, 0.6, 0.7, 0.8, 0.9])
    write("with", 0, [0.6, 0.6, 0.8, 0.8, 0.8])
    write("without", 1, [0.5, 0.5, 0.5, 0.5, 0.5])
    write("with", 1, [0.6, 0.6, 0.6, 0.6, 0.6])
    write("without", 2, [0.1] * 5)  # no partner: left out
    summary = effect.collect(tmp_path, "without", "with")
    toy = summary["toy"]
    assert toy["seeds"] == [0, 1]
    assert toy["scrobust"]["n_pairs"] == 10
    assert (toy["scrobust"]["up"], toy["scrobust"]["down"]) == (7, 1)
    assert toy["scrobust"]["difference"] == pytest.approx(0.06)  # (0.1 + 0.5) / 10
    assert "scrobust_network_only" not in toy


def test_labelled_subset_is_stratified_seeded_and_keeps_every_type():
    import numpy as np

    cv = _script("annotation_cv")
    labels = np.array(["a"] * 100 + ["b"] * 20 + ["c"] * 2)
    kept = cv.labelled_subset(labels, 0.1, seed=3)
    assert sorted(np.unique(labels[kept], return_counts=True)[1].tolist()) == [1, 2, 10]
    np.testing.assert_array_equal(kept, cv.labelled_subset(labels, 0.1, seed=3))
    assert not np.array_equal(kept, cv.labelled_subset(labels, 0.1, seed=4))
    np.testing.assert_array_equal(cv.labelled_subset(labels, 1.0, seed=3), np.arange(labels.size))


def test_precision_agreement_compares_the_same_cells_and_types_only():
    import pandas as pd

    compare = _script("precision_agreement").agreement
    fp32 = pd.DataFrame({"a": [0.7, 0.1, 0.5], "b": [0.3, 0.9, 0.5]}, index=["c1", "c2", "c3"])
    bf16 = pd.DataFrame({"a": [0.6, 0.1, 0.4], "b": [0.4, 0.9, 0.6]}, index=["c1", "c2", "c3"])
    assert compare(fp32, bf16) == {
        "max_abs_diff": 0.1,
        "mean_abs_diff": 0.06667,
        "same_type": pytest.approx(2 / 3, abs=1e-4),
    }
    assert compare(fp32, fp32) == {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "same_type": 1.0}
    with pytest.raises(ValueError, match="other cells or types"):
        compare(fp32, bf16.iloc[::-1])


def test_novelty_rule_scores_count_rejected_known_cells_as_errors():
    import numpy as np

    scores = _script("novelty_neighbourhood").rule_scores
    true = np.array(["a", "a", "b", "b", "new", "new"])
    pred = np.array(["a", "a", "b", "b", "a", "b"])
    known = true != "new"
    out = scores(np.array([0.1, 2.0, 0.1, 0.1, 2.0, 0.5]), true, pred, known)
    assert out["known_rejected"] == 0.25 and out["novel_caught"] == 0.5
    assert out["known_f1_without_rejection"] == 1.0 and out["known_f1"] < 1.0  # one "a" called Unknown
    assert out["auroc"] == 0.8125  # novel 2.0, 0.5 against known 0.1 x3, 2.0: 6.5 of 8 pairs


def test_novelty_threshold_curve_scores_both_rules_at_each_threshold():
    import numpy as np

    script = _script("novelty_neighbourhood")
    rng = np.random.default_rng(0)
    pcs = np.vstack([rng.normal(0, 1, (40, 3)), rng.normal(20, 1, (20, 3))]).astype(np.float32)
    true = np.array(["a"] * 20 + ["b"] * 20 + ["new"] * 20)
    pred = np.array(["a"] * 20 + ["b"] * 20 + ["a"] * 20)
    known = true != "new"
    own = np.r_[np.full(40, 0.2), np.full(20, 0.8)]
    own[0] = 3.0  # a lone known outlier
    curve = script.threshold_curve(
        {"novelty": own, "pcs": pcs, "true": true, "pred": pred, "known": known}, [1.0, 0.5], n_neighbors=5
    )
    assert curve["each_cell"]["1"] == script.rule_scores(own, true, pred, known)
    assert curve["each_cell"]["1"]["known_rejected"] == 1 / 40 and curve["each_cell"]["1"]["novel_caught"] == 0.0
    strict, lenient = curve["neighbourhood"]["1"], curve["neighbourhood"]["0.5"]
    assert strict["known_rejected"] == 0.0 and strict["novel_caught"] == 0.0
    assert lenient["novel_caught"] == 1.0 and lenient["known_rejected"] == 0.0


def _small_labelled_file(path: Path) -> Path:
    """Three of the demo's types, 60 cells each, its first 300 genes, written to ``path``."""
    import scrobust_sc as scrobust

    adata = scrobust.data.pbmc_demo()
    types = sorted(adata.obs["cell_type"].unique())[:3]
    adata[adata.obs["cell_type"].isin(types).to_numpy(), :300].copy().write_h5ad(path)
    return path


class _Stop(Exception):
    """Raised by a stand-in for training once it has recorded its arguments."""


@pytest.mark.parametrize("flag", [True, False])
def test_novelty_neighbourhood_pretrains_on_exactly_the_test_cells_when_asked(tmp_path, monkeypatch, flag):
    import anndata as ad
    import numpy as np

    from scrobust_sc.benchmark._splits import novel_splits

    script = _script("novelty_neighbourhood")
    data = _small_labelled_file(tmp_path / "toy.h5ad")
    seen = {}

    def record(train, labels_key, **kwargs):
        seen.update(kwargs, train=train)
        raise _Stop

    monkeypatch.setattr(script, "fit_annotator", record)
    labels = ad.read_h5ad(data).obs["cell_type"].astype(str).to_numpy()
    split = novel_splits(labels)[0]
    argv = ["--data", str(data), "--held-out", split.held_out, "--out", str(tmp_path)]
    with pytest.raises(_Stop):
        script.main(argv + ["--pretrain-on-test"] * flag)
    cells = ad.read_h5ad(data).obs_names
    assert seen["train"].obs_names.tolist() == cells[split.train].tolist()
    if flag:
        assert seen["unlabelled"].obs_names.tolist() == cells[split.test].tolist()
        assert np.isin(split.held_out, seen["unlabelled"].obs["cell_type"].astype(str)).item()
    else:
        assert seen["unlabelled"] is None


def test_annotation_cv_seeds_the_peers_and_names_the_file_by_seed(tmp_path, monkeypatch):
    import json
    import types

    import numpy as np

    cv = _script("annotation_cv")
    data = _small_labelled_file(tmp_path / "toy.h5ad")
    seeds = []

    def peer(train, test, labels_key, seed):
        seeds.append(seed)
        return types.SimpleNamespace(labels=np.full(test.n_obs, train.obs[labels_key].astype(str).iloc[0]))

    monkeypatch.setattr(cv, "METHODS", {"toy_peer": peer})
    cv.main(
        ["--data", str(data), "--folds", "0", "1", "--peers", "toy_peer", "--skip-scrobust"]
        + ["--seed", "3", "--threads", "1", "--tag", "peer", "--out", str(tmp_path)]
    )
    assert seeds == [3, 3]
    written = json.loads((tmp_path / "cv_toy_peer_seed3_folds0-1.json").read_text())
    assert {r["method"] for r in written["rows"]} == {"logreg", "toy_peer"}
    assert written["args"]["seed"] == 3


def test_annotate_wall_time_hides_a_stratified_fifth_and_scores_only_those_cells(tmp_path):
    import json

    import numpy as np

    import scrobust_sc as scrobust

    wall = _script("annotate_wall_time")
    adata = scrobust.data.pbmc_demo()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    hidden = wall.hidden_cells(labels)
    assert hidden.tolist() == wall.hidden_cells(labels).tolist()  # seeded
    assert abs(hidden.size - adata.n_obs / 5) <= len(np.unique(labels))
    for t in np.unique(labels):  # stratified: each type loses about a fifth
        assert abs(np.sum(labels[hidden] == t) - np.sum(labels == t) / 5) <= 1
    path = tmp_path / "demo.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "wall.json"
    options = json.dumps({"pretrain_steps": 0, "max_epochs": 2})
    wall.main(
        [
            "--data-dir",
            str(tmp_path),
            "--datasets",
            "demo",
            "--threads",
            "1",
            "--annotate-kwargs",
            options,
            "--out",
            str(out),
        ]
    )
    (row,) = json.loads(out.read_text())["results"]
    assert row["dataset"] == "demo" and row["modality"] == "rna"
    assert row["n_hidden"] == hidden.size and row["n_cells"] == adata.n_obs
    assert row["seconds"] > 0 and row["peak_rss_gib"] >= row["peak_rss_gib_before_annotate"] > 0
    assert 0 <= row["unknown_share_hidden"] <= 1
    assert 0 <= row["hidden_macro_f1_unknown_counted_wrong"] <= 1 and 0 <= row["hidden_macro_f1_most_likely"] <= 1
    with pytest.raises(SystemExit):
        wall.main(["--data-dir", str(tmp_path), "--datasets", "absent"])


def test_neighbourhood_memory_fits_on_every_cell_and_on_a_sample(tmp_path, monkeypatch, capsys):
    """The script's path end to end on the demo data, with the fit's cap lowered under the query."""
    import json

    import anndata as ad
    import numpy as np

    import scrobust_sc as scrobust
    from scrobust_sc.tl import _novelty

    memory = _script("neighbourhood_memory")
    source = tmp_path / "demo.h5ad"
    scrobust.data.pbmc_demo().write_h5ad(source)
    query = tmp_path / "query.h5ad"
    memory.write_query(source, query, 900, "cell_type")
    written = ad.read_h5ad(query)
    assert written.n_obs == 900 and written.obs["cell_type"].nunique() == 10
    assert np.all(written.X.data > 0) and np.all(written.X.data == np.round(written.X.data))  # thinned counts
    monkeypatch.setattr(_novelty, "NEIGHBOURHOOD_FIT_CELLS", 300)
    rows = {}
    for fit in memory.FITS:
        memory._child(str(query), fit, "cell_type")
        rows[fit] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    chance = 0.1  # ten types of 60 cells each
    assert rows["every_cell"]["same_type_neighbours"] > 5 * chance
    assert rows["sample"]["same_type_neighbours"] > 5 * chance


def test_published_stand_in_attends_to_padding_and_samples_as_published(monkeypatch):
    import numpy as np
    import scipy.sparse as sp
    import torch

    ref = _script("published_reference")
    torch.manual_seed(0)
    model = ref.PublishedModel(n_genes=6, n_classes=2, d_model=16, n_heads=2, n_layers=1).eval()
    genes, values = torch.tensor([[ref.CLS, 5, 6]]), torch.tensor([[1.0, 2.0, 1.0]])
    padded = torch.cat([genes, torch.full((1, 3), ref.MASK)], 1), torch.cat([values, torch.zeros(1, 3)], 1)
    # the published encoder has no key-padding mask: padding changes the summary token's output
    assert not torch.allclose(model(genes, values)[:, 0], model(*padded)[:, 0], atol=1e-4)

    values = torch.tensor([[0.0, 3.0, 0.0, 1.0, 2.0, 0.0]])
    (g1, v1), (g2, _) = ref.random_views(values, 50, torch.Generator().manual_seed(0))
    assert g1.shape == (1, 51) and g1[0, 0] == ref.CLS and v1[0, 0] == 1
    assert set((g1[0, 1:] - ref.N_SPECIAL).tolist()) == {1, 3, 4}  # with replacement, non-zero genes only
    zero_fraction = torch.tensor([0.1, 0.9, 0.2, 0.5, 0.3, 0.0])
    tokens, vals = ref.ranked_padded(values, zero_fraction, 4)
    assert (tokens[0, 1:] - ref.N_SPECIAL).tolist()[:3] == [1, 3, 4]  # most zeros first
    assert tokens[0, 4] == ref.MASK and vals[0, 4] == 0  # padded to k

    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1)
    by_hand = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        logits = torch.stack([z[i] @ z[j] / 0.07 for j in others])
        by_hand.append(-torch.log_softmax(logits, 0)[others.index((i + 3) % 6)])
    assert ref.nt_xent(z1, z2).item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)

    monkeypatch.setattr(ref, "SIZES", {"d_model": 16, "n_heads": 2, "n_layers": 1})
    monkeypatch.setattr(ref, "PHASES", {p: {"batch_size": 8, "n_genes": 5} for p in ("pretrain", "finetune", "embed")})
    counts = sp.random(40, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    counts.data = np.ceil(counts.data * 5)
    labels = np.array(["a", "b"] * 20)
    for phase in ("pretrain", "finetune", "embed"):
        figures = ref.measure(phase, counts, labels, steps=2, warmup=1, threads=1)
        assert figures["phase"] == phase and figures["cells_per_s"] > 0 and figures["timed_steps"] == 2


def test_published_encoder_flops_count_two_padded_views_a_cell_in_pre_training():
    throughput = _script("throughput")
    d, length = 512, 201
    per_view = 3 * (24 * length * d**2 + 4 * length**2 * d)  # issue 6's count, trained
    assert throughput.reference_flops_per_cell("pretrain", 200, d, 1) == pytest.approx(2 * per_view)
    assert throughput.reference_flops_per_cell("embed", 200, d, 1) == pytest.approx(per_view / 3)
