"""Which files a block of code opens, seen through Python's audit hooks (``open`` events cover ``open``,
``io.open``, ``Path.read_bytes``, ``os.open``...), so a test can prove that no file outside a folder was read."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LOCK = threading.Lock()
_RECORDERS: list[list[str]] = []
_INSTALLED = False


def _hook(event: str, args: tuple) -> None:
    if event != "open" or not _RECORDERS or not args:
        return
    path = args[0]
    if isinstance(path, (str, bytes, os.PathLike)):
        text = os.fsdecode(path)
        for recorder in _RECORDERS:
            recorder.append(text)


@contextmanager
def opened_files() -> Iterator[list[str]]:
    """Collect the path of every file opened in this process while the block runs (audit hooks cannot be
    removed, so the hook is installed once and only records while some block is active)."""
    global _INSTALLED
    with _LOCK:
        if not _INSTALLED:
            sys.addaudithook(_hook)
            _INSTALLED = True
    paths: list[str] = []
    _RECORDERS.append(paths)
    try:
        yield paths
    finally:
        _RECORDERS.remove(paths)


def within(paths: list[str], folder: str | os.PathLike) -> list[str]:
    """The paths whose real location (symlinks followed) lies in ``folder``: e.g. the files read in a folder
    that no code under test may touch."""
    root = Path(os.path.realpath(folder))
    return [p for p in paths if Path(os.path.realpath(p)).is_relative_to(root)]
