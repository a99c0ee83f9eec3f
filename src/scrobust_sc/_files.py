"""Files written through a temporary file beside the target, renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def remove_stale_temporaries(target: Path) -> None:
    """Delete the temporary files an earlier write of ``target`` left beside it (``.<name>.*.tmp``).

    A write goes to such a file and is renamed over ``target``; a process killed
    (``SIGKILL``) mid-write cannot remove it, so the next write into the folder does.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".last.ckpt.x1.tmp").write_text("half")
    >>> remove_stale_temporaries(folder / "last.ckpt")
    >>> list(folder.iterdir())
    []
    """
    for stale in Path(target).parent.glob(f".{Path(target).name}.*.tmp"):
        stale.unlink(missing_ok=True)


def staged_file(target: Path, write) -> Path:
    """``write(tmp)`` into a temporary file beside ``target``; its path (removed if anything fails).

    Stale temporaries of ``target`` are removed first; the file gets the permissions of a
    normal file (``mkstemp`` makes owner-only ones). Rename it over ``target`` to commit.

    Examples
    --------
    >>> import os, tempfile
    >>> target = Path(tempfile.mkdtemp()) / "model.json"
    >>> os.replace(staged_file(target, lambda tmp: Path(tmp).write_text("{}")), target)
    >>> target.read_text()
    '{}'
    """
    target = Path(target)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)
