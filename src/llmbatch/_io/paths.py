"""The files a run reads and writes, checked against each other by real path before anything.

A run writes its output, the report, the run history, the lock and backups (and
later sidecars); it reads the jobs, the schema, the template file and the config.
A written path that is also read (or written twice) would destroy a file, so
:func:`check_paths` refuses it. Paths are compared after resolving symlinks,
and existing files also by inode, so a hard link or a ``..`` spelling is caught.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from llmbatch._core.exceptions import UsageError


def real(path: Path) -> Path:
    """``path`` with every symlink resolved (the file a write would really touch)."""
    return Path(os.path.realpath(path))


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    try:
        st = os.stat(path)
    except OSError:
        return str(real(path)), None
    return str(real(path)), (st.st_dev, st.st_ino)


def check_paths(reads: Mapping[str, Path | None], writes: Mapping[str, Path | None]) -> None:
    """Refuse (UsageError) when a path written is also read, or written for two purposes.

    Keys name each path's purpose as a user would know it (``"--report"``,
    ``"the jobs file"``); ``None`` values are skipped (not used in this run).
    """
    seen: list[tuple[str, Path, tuple[str, tuple[int, int] | None]]] = []
    for name, path in reads.items():
        if path is not None:
            seen.append((name, path, _identity(path)))
    n_reads = len(seen)
    for name, path in writes.items():
        if path is None:
            continue
        ident = _identity(path)
        for i, (other, other_path, other_ident) in enumerate(seen):
            same = ident[0] == other_ident[0] or (
                ident[1] is not None and ident[1] == other_ident[1]
            )
            if same:
                verb = "reads" if i < n_reads else "writes"
                raise UsageError(
                    f"{name} {path} is {other} itself ({other_path}), which this run also "
                    f"{verb}; it would be overwritten. Choose another path. Nothing was sent."
                )
        seen.append((name, path, ident))


def file_kind(path: Path) -> str:
    """``"missing"``, ``"file"``, ``"directory"`` or ``"special"`` (device, FIFO, socket)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        return "missing"  # a parent is a file: opening it will say so
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special"


def is_own_stdout(path: Path) -> bool:
    """Whether ``path`` names the file our standard output already is (``/dev/stdout``)."""
    try:
        st = os.stat(path)
        out = os.fstat(1)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino)


def resolve_output(value: str) -> Path | None:
    """The results file ``-o VALUE`` names (None: standard output), or UsageError.

    Symlinks are resolved, so the lock, resume and history key on the file itself:
    an alias of a running run's output meets its lock.
    """
    if value == "-":
        return None
    path = Path(value)
    kind = file_kind(path)
    if kind == "directory":
        raise UsageError(f"--output {value} is a directory; give a file path")
    if kind == "special":
        if is_own_stdout(path):
            return None  # `-o /dev/stdout`: the same as `-o -`
        raise UsageError(
            f"--output {value} is not a regular file (a device, pipe or socket): results "
            "must go to a file that can be read back on resume. Use -o - to stream them "
            "to standard output."
        )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"--output {value}: {parent} is not a directory")
    resolved = real(path)
    return resolved if resolved != path.absolute() else path


def resolve_report(path: Path) -> Path:
    """A report path (``--report``, ``--html``), refused if it is a directory (devices
    and pipes are fine)."""
    if file_kind(path) == "directory":
        raise UsageError(f"{path} is a directory; give a file path for the report")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{path}: {parent} is not a directory")
    return path
