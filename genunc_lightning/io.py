"""Atomic file writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 (and a writer may replace the file): the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Writes a CSV table (text quoted where it needs to be) to ``path`` atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def check_writable_file(path: str | Path, what: str) -> list[Path]:
    """Fails now, not after hours of work, when ``path`` cannot be written (a directory, or a read-only place).

    Creates the parent directories, as the final write would, and returns those it created (deepest
    last), so that a run that fails can remove them again (``remove_empty_dirs``).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"The output for {what}, {path}, is a directory: give a file path.")
    created = [p for p in reversed(path.parent.absolute().parents) if not p.exists()]
    created += [path.parent.absolute()] if not path.parent.exists() else []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        remove_empty_dirs(created)
        raise PermissionError(f"Cannot write {what} to {path}: {err.strerror or err}. Choose a writable path.") from err
    return created


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Removes ``dirs`` (parents first, as ``check_writable_file`` lists them) where they are still empty."""
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:  # not empty (something else was written there), or gone already
            return


def save_safetensors_atomic(
    tensors: dict[str, Any], path: str | Path, what: str, metadata: dict[str, str] | None = None
) -> Path:
    """Writes a safetensors file atomically; a failed write (a full disk, say) is one ``OSError`` naming the path.

    safetensors reports I/O failures as its own ``SafetensorError``, not an ``OSError``: it is turned into
    one here, so every writer of the package fails the same way and leaves nothing behind.

    Args:
        tensors: name -> tensor (made contiguous here).
        path: the file.
        what: what the file is, named in the error.
        metadata: the file's string metadata.
    """
    from safetensors.torch import save_file

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    except OSError:
        raise
    except Exception as err:  # SafetensorError: "Error while serializing: I/O error: No space left on device"
        raise OSError(
            f"Cannot write {what} to {path}: {err}. Free space there (or choose another path) and re-run."
        ) from err
    return path
