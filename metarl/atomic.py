"""Atomic file writes: a file is either its old or its new content, never half of one.

Every file metarl writes into a run directory, an evaluation or a comparison goes through :func:`write_bytes`
/ :func:`write_text`: the content is written to a temporary file ``.<name>.<random>.tmp`` in the target's
directory, flushed to disk (``fsync``), renamed over the target (``os.replace``, atomic on POSIX) and the
directory entry is synced. A process killed at any moment, or a write failing with ``ENOSPC`` / ``EROFS``,
leaves the previous file untouched; the temporary file is removed on failure, and
:func:`remove_stale_temporaries` removes those of a killed process. New files get the mode ``open`` would
give them (``0o666`` minus the umask), not ``mkstemp``'s ``0o600``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file + fsync + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def write_text(path: Path | str, text: str) -> None:
    """:func:`write_bytes` of ``text`` encoded as UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: some file systems cannot fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: Path | str) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed writer left in ``directory`` and its subdirectories;
    returns what was removed. Call it only while holding the directory's lock."""
    removed = []
    for tmp in Path(directory).rglob(f".*{TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    return removed
