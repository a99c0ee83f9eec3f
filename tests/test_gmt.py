from pathlib import Path

import pytest

import scrobust_sc as scrobust
from scrobust_sc.data import read_gmt

SHARED_GMT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pancreas_celltype_genesets.gmt"


def write(tmp_path, text: str, name: str = "sets.gmt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_name_description_and_genes(tmp_path):
    path = write(tmp_path, "BETA\thttp://example.org/beta set\tINS\tIAPP\nALPHA\tglucagon cells\tGCG\tARX\tTTR\n")
    sets = read_gmt(path)
    assert sets == {"BETA": ["INS", "IAPP"], "ALPHA": ["GCG", "ARX", "TTR"]}
    assert list(sets) == ["BETA", "ALPHA"]  # file order kept


def test_description_never_taken_as_gene_even_when_empty(tmp_path):
    # an empty description must not shift the first gene into its place
    path = write(tmp_path, "delta\t\tSST\tHHEX\n")
    assert read_gmt(str(path)) == {"delta": ["SST", "HHEX"]}


def test_empty_fields_blank_lines_and_crlf(tmp_path):
    text = "\nbeta\tdesc\tINS\t\tIAPP\t\t\r\n\n   \n\t\t\nalpha\tdesc\t GCG \t\n"
    assert read_gmt(write(tmp_path, text)) == {"beta": ["INS", "IAPP"], "alpha": ["GCG"]}


def test_duplicate_genes_dropped_keeping_first_place(tmp_path):
    path = write(tmp_path, "beta\tdesc\tINS\tIAPP\tINS\tPDX1\tIAPP\n")
    assert read_gmt(path)["beta"] == ["INS", "IAPP", "PDX1"]


def test_duplicate_set_name_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, "beta\td\tINS\nalpha\td\tGCG\nbeta\td\tIAPP\n")
    with pytest.raises(ValueError, match=r"'beta'.*more than once"):
        read_gmt(path)


def test_set_without_genes_or_name_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"'beta' lists no gene"):
        read_gmt(write(tmp_path, "beta\tonly a description\t\n"))
    with pytest.raises(ValueError, match="no name"):
        read_gmt(write(tmp_path, "\tdesc\tINS\n", "noname.gmt"))


def test_exported_from_data():
    assert scrobust.data.read_gmt is read_gmt


@pytest.mark.skipif(not SHARED_GMT.exists(), reason="shared pancreas gene sets not available")
def test_shared_pancreas_gene_sets():
    sets = read_gmt(SHARED_GMT)
    assert list(sets)[:4] == ["alpha", "beta", "delta", "gamma"]
    assert len(sets) == 10
    assert all(genes and len(genes) == len(set(genes)) for genes in sets.values())
    assert "pancreas" not in " ".join(sets["alpha"])  # description dropped
