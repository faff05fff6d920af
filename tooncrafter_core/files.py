"""Writing files that a later run reads: under a temporary name, renamed into place when complete, so
a process killed at any moment leaves the old file or the new one, never a truncated one under the
name a reader looks for; and names from outside data that must stay inside their folder.

Leftovers of a killed write are hidden (`.NAME.partial-PID`) and carry no model extension, so neither
ComfyUI's file lists nor our readers pick them up; `clean_partials` removes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

PARTIAL = re.compile(r"^\..+\.partial-\d+$")


def partial_name(path: Path) -> Path:
    return path.parent / f".{path.name}.partial-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write a file or a whole folder to; renamed onto `path` when the
    block ends normally (an existing folder there is replaced), removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_name(path)
    _remove(temporary)
    try:
        yield temporary
        if temporary.is_dir() and path.is_dir():
            # A folder cannot be renamed onto a non-empty one: move the old one aside first.
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            _remove(old)
            os.replace(path, old)
            os.replace(temporary, path)
            _remove(old)
        else:
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def clean_partials(folder: str | Path) -> list[Path]:
    """Remove the leftovers of killed writes directly in `folder`; returns what was removed."""
    folder = Path(folder)
    removed = [p for p in folder.iterdir() if PARTIAL.match(p.name) or re.match(r"^\..+\.old-\d+$", p.name)] \
        if folder.is_dir() else []
    for p in removed:
        _remove(p)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def child(folder: str | Path, name: str, what: str) -> Path:
    """`folder / name` for a name from outside data (a shot id, a LoRA name), refused unless it is one
    plain entry of `folder`: no separators, no `..` or leading dot, not absolute, and not a symbolic
    link that leads elsewhere. ValueError names `what` and the fix."""
    if (not name or name != name.strip() or name in (".", "..") or name.startswith(".") or os.path.isabs(name)
            or any(c in name for c in "/\\:\0")):
        raise ValueError(f"{what} {name!r} cannot name a folder inside {folder}: use a plain name (letters, digits, "
                         "- and _; no /, \\, :, .. or leading dot)")
    path = Path(folder) / name
    if path.is_symlink() or (path.exists() and not path.resolve().is_relative_to(Path(folder).resolve())):
        raise ValueError(f"{what} {name!r}: {path} is a symbolic link; writing through it would leave {folder}: "
                         "remove the link or pick another name")
    return path
