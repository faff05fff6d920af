"""Writing files that a later run reads: under a temporary name, renamed into place when complete, so
a process killed at any moment leaves the old file or the new one, never a truncated one under the
name a reader looks for; and names from outside data that must stay inside their folder.

Leftovers of a killed write are hidden (`.NAME.partial-PID`) and carry no model extension, so neither
ComfyUI's file lists nor our readers pick them up. The next write of the same name removes those of
processes that are gone (a killed conversion leaves gigabytes); `clean_partials` does it for a folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")


def partial_name(path: Path) -> Path:
    return path.parent / f".{path.name}.partial-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write a file or a whole folder to; renamed onto `path` when the
    block ends normally (an existing folder there is replaced), removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean(path.parent, path.name)
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
    """Tidy what killed writes left directly in `folder`; returns the leftovers it removed or restored."""
    return _clean(Path(folder))


def _clean(folder: Path, name: str | None = None) -> list[Path]:
    """Leftovers of processes that are gone (of one entry `name`, or of all): partial writes are removed;
    a folder moved aside (`.old`) whose replacement never arrived is put back, so the old state stays."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = LEFTOVER.match(entry.name)
        if not match or (name is not None and match["name"] != name) or _running(int(match["pid"])):
            continue
        target = folder / match["name"]
        if match["kind"] == "old" and not target.exists():
            os.replace(entry, target)
        else:
            _remove(entry)
        found.append(entry)
    return found


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it (atomic_path reuses its own name)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid we cannot check): leave its files alone
    return True


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
