"""Paths made from what a user, a file or a grid says: each goes through one of these, so that a name stays
one name, a path stays inside its folder, and a file that must be read is a file.

- :func:`folder_name`: a value meant as one folder or file name (a run name, a sweep's name, a grid cell's);
- :func:`inside`: a path joined onto a folder, which must stay in that folder;
- :func:`regular_file`: a path that binclf reads as a file: not a folder, a FIFO or a device, which would
  fail later with a misleading message, or block for ever.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# A name: not empty, not a path, no control characters, short enough for every file system.
_LONGEST_NAME = 200


def folder_name(value: str, setting: str) -> str:
    """``value`` if it is one plain folder or file name; else ``ValueError`` naming ``setting``."""
    why = None
    if not isinstance(value, str) or not value.strip():
        why = "is empty"
    elif value in (".", "..") or "/" in value or "\\" in value:
        why = "is a path, not one name"
    elif any(ord(character) < 32 or ord(character) == 127 for character in value):
        why = "holds a control character"
    elif len(value.encode("utf-8", errors="surrogatepass")) > _LONGEST_NAME:
        why = f"is longer than {_LONGEST_NAME} bytes"
    elif value != value.strip() or value.startswith("-"):
        why = "starts or ends with a space, or starts with -"
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            why = "is not text a file system can hold"
    if why is not None:
        raise ValueError(f"{setting} {_shown(value)} {why}: give one folder name")
    return value


def inside(folder: Path, name: str, setting: str) -> Path:
    """``folder / name``, once ``name`` is one name (:func:`folder_name`) and the path lies in ``folder``."""
    path = folder / folder_name(name, setting)
    if os.path.commonpath([path.resolve(), folder.resolve()]) != str(folder.resolve()):
        raise ValueError(f"{setting} {_shown(name)} leads out of {folder}")
    return path


def regular_file(path: Path, setting: str) -> Path:
    """``path`` if it names a regular file (following links); else ``ValueError`` naming ``setting``, or
    ``FileNotFoundError`` where there is nothing."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{setting}: {path} does not exist") from None
    except OSError as error:
        raise ValueError(f"{setting}: {path} cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ValueError(f"{setting}: {path} is {kind}, not a file")
    return path


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
