"""Reading gene sets from GMT files."""

from __future__ import annotations

from os import PathLike
from pathlib import Path


def read_gmt(path: str | PathLike) -> dict[str, list[str]]:
    r"""Read gene sets from a GMT file (MSigDB's Gene Matrix Transposed format).

    One gene set per line, tab separated: the set's name, a description (may be empty,
    is not kept), then its genes. Empty fields (e.g. trailing tabs) and blank lines are
    skipped; a gene listed twice in a set is kept once, at its first place.

    Parameters
    ----------
    path
        The ``.gmt`` file.

    Returns
    -------
    Set name -> genes, in the file's order.

    Raises
    ------
    ValueError
        When a set name appears twice, a line has no name, or a set has no gene.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sets.gmt"
    >>> _ = path.write_text("beta\tinsulin cells\tINS\tIAPP\tINS\n\nalpha\t\tGCG\t\n")
    >>> read_gmt(path)
    {'beta': ['INS', 'IAPP'], 'alpha': ['GCG']}
    """
    path = Path(path)
    gene_sets: dict[str, list[str]] = {}
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = [field.strip() for field in line.rstrip("\r\n").split("\t")]
            name = fields[0]
            if not name:
                raise ValueError(f"{path}, line {line_number}: the gene set has no name (first field).")
            if name in gene_sets:
                raise ValueError(f"{path}, line {line_number}: gene set {name!r} appears more than once.")
            genes = list(dict.fromkeys(field for field in fields[2:] if field))
            if not genes:
                raise ValueError(f"{path}, line {line_number}: gene set {name!r} lists no gene.")
            gene_sets[name] = genes
    return gene_sets
