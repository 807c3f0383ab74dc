"""Writing files without ever losing one: atomic replacement, guarded overwrites, clean errors.

Every file diffrec writes goes through :func:`atomic_write` (or :func:`atomic_file` for
writers that want a path): the bytes go to a hidden temporary file beside the target,
which replaces the target in one ``os.replace`` only once it is complete. A failure at
any point removes the temporary file and leaves the target as it was.

Overwriting is guarded by :func:`check_overwrite`: an existing target is replaced only
with ``force`` and only when it is recognisably diffrec's own (a recogniser reads its
first bytes), so ``--force`` never replaces a user's file.

:func:`os_error` turns an ``OSError`` into the one-line :class:`DiffrecError` the CLI
prints, naming the user's path and never an internal temporary file.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import uuid
from collections.abc import Callable, Iterator

from diffrec.errors import DiffrecError

#: Marker in the name of every temporary file or folder diffrec creates beside a target.
TEMP_MARK = ".diffrec-"


def temp_sibling(path: pathlib.Path, tag: str = "tmp") -> pathlib.Path:
    """A hidden, unique name beside ``path`` for a file or folder being written."""
    return path.with_name(f".{path.name}{TEMP_MARK}{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of diffrec's temporary files (current and earlier naming)."""
    return TEMP_MARK in name or name.endswith(".tmp")


def os_error(exc: OSError, path: str | os.PathLike[str] | None = None, action: str = "") -> DiffrecError:
    """One line for an OS error about ``path`` (the user's path, not a temporary one)."""
    reason = exc.strerror or type(exc).__name__
    where = os.fspath(path) if path is not None else exc.filename
    what = f"cannot {action} " if action else ""
    if where:
        return DiffrecError(f"{what}{where}: {reason}" if what else f"{where}: {reason}")
    return DiffrecError(f"{what}{reason}" if what else reason)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is untouched; an
    ``OSError`` becomes a one-line :class:`DiffrecError` naming ``path``.
    """
    target = pathlib.Path(path)
    tmp = temp_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        _remove_quietly(tmp)
        raise os_error(exc, target, "write") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())


def _remove_quietly(path: pathlib.Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def read_head(path: pathlib.Path, size: int = 256) -> bytes:
    """The first ``size`` bytes of a file (empty when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def check_overwrite(path: pathlib.Path, force: bool, recognise: Callable[[pathlib.Path], bool], what: str) -> None:
    """Refuse to replace ``path`` unless ``force`` is given and it is diffrec's own ``what``.

    ``recognise(path)`` says whether an existing regular file was written by diffrec.
    """
    if not os.path.lexists(path):
        return
    if not force:
        raise DiffrecError(f"{path} exists (use --force to replace it)")
    if path.is_symlink() or not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise DiffrecError(f"refusing to replace {path}: it is {kind}, not a {what} written by diffrec")
    if not recognise(path):
        raise DiffrecError(f"refusing to replace {path}: it is not a {what} written by diffrec (--force only replaces diffrec's own files)")


def make_dirs(path: pathlib.Path) -> list[pathlib.Path]:
    """Create ``path`` and its missing parents; return the folders created, outermost first.

    Pair with :func:`remove_created` to leave nothing behind when a command fails.
    """
    missing: list[pathlib.Path] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    if os.path.lexists(current) and not current.is_dir():
        raise DiffrecError(f"{current} exists and is not a folder")
    created: list[pathlib.Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # made meanwhile by another process
        except OSError as exc:
            remove_created(created)
            raise os_error(exc, folder, "create") from None
        created.append(folder)
    return created


def remove_created(created: list[pathlib.Path]) -> None:
    """Remove folders that :func:`make_dirs` created, innermost first, where they are empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()
