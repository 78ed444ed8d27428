"""Every file and folder hf-tsv writes goes through here, so that bad input or a crash never costs data.

Guarantees (and how they are kept):

* **Inputs are never touched.** An output folder (or ``--json`` file) that is, contains or lies inside an input
  (a local model folder, a TSV-C folder, the folders a Hub model's files resolve into, or a Hub id's cache folder)
  is refused, comparing paths after resolving symbolic links, before any heavy work.
* **Nothing is replaced unless asked and safe.** An existing output folder is replaced only with
  ``--overwrite`` (``overwrite=True``), and only when it is empty or an earlier hf-tsv output: it holds a
  ``merge_report.json`` (a JSON object with a string ``method`` and a ``versions`` object naming ``hf-tsv``), a
  ``tsv_c.json`` (``"format": "hf-tsv/tsv-c"``) or a ``compare.json`` (``"schema": "hf-tsv/compare"``), and
  nothing but files hf-tsv writes (:mod:`hf_tsv.files`). An
  empty existing folder is also used without ``--overwrite``: it holds nothing to lose.
* **Outputs appear whole or not at all.** A folder is written into a hidden temporary folder beside the target,
  flushed to disk, then renamed into place; a file is written to a hidden temporary file and renamed. On
  Linux the rename is ``renameat2``: ``RENAME_NOREPLACE`` when there was no target, so a target that appeared
  meanwhile (another run) is kept and this run fails; ``RENAME_EXCHANGE`` for ``--overwrite``, so the target is
  never missing, even if the process dies between the swap and the removal of the old copy. Elsewhere (or on a
  filesystem without these flags) the portable fallback is weaker: ``os.rename``, which refuses a non-empty
  target but replaces an empty folder created in the instant after the check; and ``--overwrite`` moves the old
  output to a hidden backup, renames the new one into place and removes the backup, so for an instant the target
  is missing: a process that dies there leaves the backup, which the next run into the same folder renames back.
* **No leftovers.** On an error, Ctrl+C or SIGTERM the temporary folder is removed (SIGTERM is turned into
  :class:`Terminated` while an output is being written, unless the program handles SIGTERM itself). A process
  killed outright (SIGKILL, power loss) leaves its temporary folder, named
  ``.<target>.tmp-hf-tsv.<host>.<pid>.<random>``; the next run into the same parent removes those of processes of
  this host that no longer exist (on POSIX systems; a pid reused by a new process keeps its folder, which is safe).
* **Permissions follow the user's umask**, as for any folder ``mkdir`` makes.
* **Failures are one line.** A path that cannot be used raises :class:`~hf_tsv.errors.OutputPathError`, an
  existing target :class:`~hf_tsv.errors.OutputExistsError`, a failed write (disk full, I/O error, a refused
  rename) :class:`~hf_tsv.errors.OutputWriteError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import HFTSVError, OutputExistsError, OutputPathError, OutputWriteError
from ..files import (
    COMPARE_JSON_NAME,
    COMPARE_SCHEMA,
    REPORT_NAME,
    SIDE_FOLDERS,
    TSVC_FORMAT,
    TSVC_INDEX_NAME,
    is_output_file_name,
)
from ..json_io import dumps_json
from ..secrets import redact_json

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"
# ``.<target name>.<tmp|old>-hf-tsv.<host>.<pid>.<random>``: "tmp" holds a result being written, "old" an output
# being replaced (portable fallback only). ".tmp-" keeps the names recognisable as temporary at a glance.
_SCRATCH = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-hf-tsv\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+")
_NAME_BUDGET = 150  # longer target names are cut in scratch names, which must stay under 255 bytes
_MARKER_MAX_BYTES = 64 * 2**20


class Terminated(SystemExit):
    """SIGTERM arrived while an output was being written; the partial output has been removed. Exits with
    status 143 (128 + SIGTERM) when not caught, like a process killed by SIGTERM."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


# ---------------------------------------------------------------------------------------------------------------
# Inputs: where they live on disk
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputLocation:
    """A folder that holds (part of) an input, resolved; ``label`` names the input as the user gave it."""

    label: str
    path: Path


def _hub_cache_folder(reference: str) -> Path | None:
    """The Hub cache folder that holds (or will hold) a Hub id's files, or None if ``reference`` is no Hub id."""
    repo_id = reference.split("@", 1)[0]
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
        return None
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type="model"))


def input_locations(inputs: Iterable) -> list[InputLocation]:
    """Where each input lives on disk, resolved: a local folder; a resolved model's folder and the folders its
    weight files resolve into (a Hub snapshot's files are links into its ``blobs`` folder); a Hub id not
    resolved yet: its cache folder. In-memory models and None take no place.

    Example:
        >>> [loc.label for loc in input_locations(["/tmp", None])]
        ['/tmp']
    """
    found: list[InputLocation] = []
    for item in inputs:
        if item is None:
            continue
        if isinstance(item, InputLocation):
            found.append(item)
            continue
        reader = getattr(item, "reader", None)
        if reader is not None:  # a ResolvedModel
            if getattr(reader, "folder", None) is None:
                continue
            files = {info.file for info in reader.infos.values()} | {reader.weights_file}
            folders = {Path(reader.folder)} | {Path(f).resolve().parent for f in files}
            found.extend(InputLocation(item.name, f.resolve()) for f in sorted(folders))
        elif isinstance(item, (str, os.PathLike)):
            path = Path(item).expanduser()
            if os.path.exists(path):
                found.append(InputLocation(os.fspath(item), path.resolve()))
            else:
                cache = _hub_cache_folder(os.fspath(item))
                if cache is not None:
                    found.append(InputLocation(os.fspath(item), cache.resolve()))
    return found


def _refuse_input_overlap(target: Path, shown: str, what: str, inputs: Iterable) -> None:
    """Raise when ``target`` is, contains or lies inside an input (compared after resolving links)."""
    resolved = target.resolve()
    for location in input_locations(inputs):
        if resolved == location.path:
            relation = "is the same folder as"
        elif location.path in resolved.parents:
            relation = "lies inside"
        elif resolved in location.path.parents:
            relation = "contains"
        else:
            continue
        raise OutputPathError(f"{what} {shown} {relation} input {location.label!r}; writing there could destroy "
                              "the input: choose a path outside every input")


# ---------------------------------------------------------------------------------------------------------------
# Checks, before any heavy work
# ---------------------------------------------------------------------------------------------------------------


def _check_parent(target: Path, shown: str, what: str, create_parents: bool) -> None:
    """The target's folder (or, when it may be created, its nearest existing ancestor) must be a writable folder.
    ``target`` as the user wrote it (relative or not), so that messages name the folders the same way."""
    parent = target.parent
    if not create_parents and not os.path.exists(parent):
        raise OutputPathError(f"cannot write {what} {shown}: folder {str(parent)!r} does not exist; create it "
                              "first or choose another path")
    existing = next((p for p in (parent, *parent.parents) if os.path.exists(p)), Path(target.absolute().anchor))
    if not os.path.isdir(existing):
        raise OutputPathError(f"cannot write {what} {shown}: {str(existing)!r} is a file, not a folder; choose "
                              "another path")
    effective = os.access in os.supports_effective_ids
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=effective):
        raise OutputPathError(f"cannot write {what} {shown}: folder {str(existing)!r} is not writable by this "
                              "user; choose another path or change its permissions")


def _is_hftsv_marker(path: Path, check) -> bool:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > _MARKER_MAX_BYTES:
            return False
        return check(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def _is_merge_report(data) -> bool:
    if not isinstance(data, dict):
        return False
    versions = data.get("versions")
    return isinstance(data.get("method"), str) and isinstance(versions, dict) and "hf-tsv" in versions


def _is_tsvc_index(data) -> bool:
    return isinstance(data, dict) and data.get("format") == TSVC_FORMAT


def _is_comparison(data) -> bool:
    return isinstance(data, dict) and data.get("schema") == COMPARE_SCHEMA


def is_hftsv_output(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` was written by hf-tsv: it holds a ``merge_report.json``, ``tsv_c.json`` or
    ``compare.json`` (``hf-tsv compare``) of the schema hf-tsv writes (see the module docstring)."""
    folder = Path(folder)
    return (_is_hftsv_marker(folder / REPORT_NAME, _is_merge_report)
            or _is_hftsv_marker(folder / TSVC_INDEX_NAME, _is_tsvc_index)
            or _is_hftsv_marker(folder / COMPARE_JSON_NAME, _is_comparison))


def replace_refusal(folder: Path) -> str | None:
    """Why the existing folder must not be replaced, or None when it is empty or an earlier hf-tsv output that
    holds only files hf-tsv writes."""
    with os.scandir(folder) as scan:
        entries = list(scan)
    if not entries:
        return None
    if not is_hftsv_output(folder):
        return (f"it is not an hf-tsv output (it has no {REPORT_NAME}, {TSVC_INDEX_NAME} or {COMPARE_JSON_NAME} "
                "written by hf-tsv)")
    for entry in entries:
        if entry.name in SIDE_FOLDERS and entry.is_dir(follow_symlinks=False):
            reason = _side_folder_refusal(Path(entry.path))
            if reason:
                return reason
            continue
        ours = is_output_file_name(entry.name) or _SCRATCH.fullmatch(entry.name) is not None
        if not ours or not entry.is_file(follow_symlinks=False):
            return f"it holds {entry.name!r}, which hf-tsv did not write"
    return None


def _side_folder_refusal(folder: Path) -> str | None:
    """Why a side folder of an output (``1_Pooling``) must not be replaced: it holds something hf-tsv did not
    write; None when it holds only side files (or nothing)."""
    with os.scandir(folder) as scan:
        for entry in scan:
            name = f"{folder.name}/{entry.name}"
            if not is_output_file_name(name) or not entry.is_file(follow_symlinks=False):
                return f"it holds {name!r}, which hf-tsv did not write"
    return None


def check_output_dir(path: str | os.PathLike, overwrite: bool, inputs: Iterable = ()) -> Path:
    """Refuse, before any heavy work, an output folder that cannot be written safely; return it as an absolute
    path. Also removes the scratch folders that dead hf-tsv processes left beside it.

    ``inputs`` are the model references, resolved models or folders the output must stay clear of.

    Raises:
        OutputPathError: the path is, contains or lies inside an input; lies below a file; its folder is not
            writable; it is a symbolic link.
        OutputExistsError: it exists and is not empty (without ``overwrite``), or is not an hf-tsv output.

    Example:
        >>> check_output_dir("/tmp/surely-new-folder", overwrite=False)  # doctest: +SKIP
        PosixPath('/tmp/surely-new-folder')
    """
    shown = repr(os.fspath(path))
    _check_parent(Path(path).expanduser(), shown, "output folder", create_parents=True)
    out = Path(path).expanduser().absolute()
    if os.path.isdir(out.parent):
        sweep_stale(out.parent)
    _refuse_input_overlap(out, shown, "output folder", inputs)
    if os.path.islink(out):
        raise OutputPathError(f"output folder {shown} is a symbolic link; give the folder it points to, or "
                              "another path")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise OutputExistsError(f"output {shown} exists and is not a folder; choose another path")
        if any(out.iterdir()):
            if not overwrite:
                raise OutputExistsError(f"output folder {shown} exists and is not empty; pass --overwrite "
                                        "(overwrite=True) to replace it, or choose another path")
            reason = replace_refusal(out)
            if reason:
                raise OutputExistsError(f"output folder {shown} was not replaced: {reason}. --overwrite replaces "
                                        "only an empty folder or an earlier hf-tsv output: move its files away "
                                        "or choose another path")
    return out


def check_output_file(path: str | os.PathLike, inputs: Iterable = ()) -> Path:
    """Refuse, before any work, a file path that cannot be written (``--json FILE``): its folder is missing or
    not writable, it is a folder, or it lies inside an input. Returns the absolute path.

    Example:
        >>> check_output_file("/tmp/plan.json")  # doctest: +SKIP
        PosixPath('/tmp/plan.json')
    """
    shown = repr(os.fspath(path))
    _check_parent(Path(path).expanduser(), shown, "file", create_parents=False)
    target = Path(path).expanduser().absolute()
    sweep_stale(target.parent)
    _refuse_input_overlap(target, shown, "file", inputs)
    if os.path.isdir(target):
        raise OutputPathError(f"cannot write file {shown}: it is a folder; give a file name")
    return target


# ---------------------------------------------------------------------------------------------------------------
# Scratch names and the removal of what dead processes left
# ---------------------------------------------------------------------------------------------------------------


def _scratch_name(target_name: str, kind: str = "tmp") -> str:
    """A scratch name beside ``target_name``. Only "tmp" names cut a long target name: an "old" backup must name
    its target whole, to be renamed back (a name too long for it fails the fallback swap, before any change)."""
    too_long = kind == "tmp" and len(target_name.encode()) > _NAME_BUDGET
    name = target_name[:_NAME_BUDGET // 4] if too_long else target_name
    return f".{name}.{kind}-hf-tsv.{HOST}.{os.getpid()}.{secrets.token_hex(4)}"


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists on this host (False whenever unsure)."""
    if os.name != "posix" or pid <= 0:
        return False  # on Windows os.kill(pid, 0) would send Ctrl+C
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, under another user
        return False
    return False


def sweep_stale(parent: Path) -> None:
    """Remove the scratch folders and files that hf-tsv processes of this host, now gone, left in ``parent``.
    A backup of an output being replaced (portable fallback, see the module docstring) is renamed back to its
    target when the target is missing."""
    try:
        with os.scandir(parent) as scan:
            entries = [e for e in scan if e.name.startswith(".")]
    except OSError:
        return
    for entry in entries:
        match = _SCRATCH.fullmatch(entry.name)
        if not match or match["host"] != HOST or not _process_gone(int(match["pid"])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_symlink():
                continue
            if match["kind"] == "old":
                target = parent / match["name"]
                if not os.path.lexists(target):
                    os.rename(path, target)
                    continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()


# ---------------------------------------------------------------------------------------------------------------
# Renames: atomic on Linux, a documented weaker fallback elsewhere
# ---------------------------------------------------------------------------------------------------------------

_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no libc symbol (old glibc, musl)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``: True when done, False when unavailable here (the caller falls back);
    any other failure raises the matching OSError (FileExistsError, FileNotFoundError...)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; FileExistsError when ``dst`` exists (see the module docstring for the fallback)."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
    try:
        os.rename(src, dst)  # POSIX: refuses a non-empty folder at dst
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst)) from exc
        raise


def _exchange(new: Path, target: Path) -> None:
    """Swap ``new`` and ``target``: afterwards ``target`` holds the new folder and ``new`` the old one.
    FileNotFoundError when ``target`` is gone."""
    if _renameat2(new, target, _RENAME_EXCHANGE):
        return
    backup = target.parent / _scratch_name(target.name, "old")
    os.rename(target, backup)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(backup, target)
        raise
    os.rename(backup, new)


def _sync(path: Path, *, folder: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk: a write error the kernel held back surfaces here (EIO).
    A folder that cannot be opened or synced (Windows, some network filesystems) is skipped, save for EIO."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not folder or exc.errno == errno.EIO:
            raise
    finally:
        os.close(fd)


def _sync_tree(folder: Path) -> None:
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            _sync(Path(entry.path))
        elif entry.is_dir(follow_symlinks=False):  # a side folder (1_Pooling)
            _sync_tree(Path(entry.path))
    _sync(folder, folder=True)


# ---------------------------------------------------------------------------------------------------------------
# SIGTERM while writing
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (once) instead of killing the process, so the
    caller's cleanup runs as on Ctrl+C. Left alone off the main thread, or when SIGTERM already has a handler."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    fired = []

    def on_sigterm(signum, frame) -> None:
        if not fired:  # a second SIGTERM during the cleanup does not interrupt it
            fired.append(signum)
            raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def _write_failure(shown: str, exc: OSError, scratch: Path | None) -> OutputWriteError:
    """One line for a failed write; names the file by its name inside the output, never the scratch path."""
    where = ""
    if exc.filename:
        file = Path(os.fsdecode(exc.filename))
        inside = scratch is not None and (file == scratch or scratch in file.parents)
        where = f" ({file.relative_to(scratch)})" if inside and file != scratch else ("" if inside else f" ({file})")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputWriteError(f"could not write {shown}{where}: {reason}; nothing was left there (an earlier output "
                            "is kept): free some space, check the disk, or choose another path")


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing ancestors (umask applies); return the ones created, outermost first."""
    missing = [p for p in [folder, *folder.parents] if not os.path.exists(p)]
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:  # another run made it meanwhile: not ours to remove
            continue
        created.append(path)
    return created


def _make_scratch_dir(target: Path) -> Path:
    while True:
        scratch = target.parent / _scratch_name(target.name)
        try:
            os.mkdir(scratch)  # 0o777 less the umask, unlike mkdtemp's 0o700
            return scratch
        except FileExistsError:
            continue


def _commit(scratch: Path, target: Path, shown: str, replacing: bool) -> None:
    """Rename the complete ``scratch`` folder into ``target``: never over a folder that appeared meanwhile, and
    over an existing one (``replacing``) only if it may still be replaced."""
    _sync_tree(scratch)
    if replacing and os.path.lexists(target):
        reason = replace_refusal(target) if os.path.isdir(target) and not os.path.islink(target) else "not a folder"
        if reason:
            raise OutputExistsError(f"output folder {shown} changed while hf-tsv was writing ({reason}); it was "
                                    "left as it is and this run's result was discarded")
        try:
            _exchange(scratch, target)  # the scratch path now holds the old output
        except FileNotFoundError:
            _rename_noreplace_or_refuse(scratch, target, shown)
        else:
            reason = replace_refusal(scratch)
            if reason:  # it changed between the check and the swap: put it back
                _exchange(scratch, target)
                raise OutputExistsError(f"output folder {shown} changed while hf-tsv was writing ({reason}); it "
                                        "was left as it is and this run's result was discarded")
            shutil.rmtree(scratch, ignore_errors=True)  # the new output is in place; a leftover is swept later
    else:
        _rename_noreplace_or_refuse(scratch, target, shown)
    _sync(target.parent, folder=True)


def _rename_noreplace_or_refuse(scratch: Path, target: Path, shown: str) -> None:
    try:
        _rename_noreplace(scratch, target)
    except FileExistsError:
        raise OutputExistsError(f"output {shown} appeared while hf-tsv was writing (another run into the same "
                                "path?); it was left as it is and this run's result was discarded: choose another "
                                "path") from None


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False, inputs: Iterable = ()) -> Iterator[Path]:
    """Yield a hidden scratch folder beside ``path``; when the block ends it replaces ``path`` atomically, and on
    an error, Ctrl+C or SIGTERM it is removed (with any parent folders it created). See the module docstring
    for what is guaranteed; :func:`check_output_dir` runs first (with ``inputs``).

    Raises:
        OutputPathError, OutputExistsError: as :func:`check_output_dir`; OutputExistsError also when the target
            appeared (or changed) while the block ran.
        OutputWriteError: any OSError while writing or renaming (disk full, I/O error...).

    Example:
        >>> with atomic_output_dir("/tmp/merged", overwrite=True) as tmp:  # doctest: +SKIP
        ...     write_file_atomic(tmp / "config.json", "{}")
    """
    shown = repr(os.fspath(path))
    target = check_output_dir(path, overwrite, inputs)
    replacing = os.path.isdir(target)
    created: list[Path] = []
    scratch: Path | None = None
    try:
        with _terminate_raises():
            created = _make_parents(target.parent)
            try:
                scratch = _make_scratch_dir(target)
                yield scratch
                _commit(scratch, target, shown, replacing)
            except BaseException:
                if scratch is not None:
                    shutil.rmtree(scratch, ignore_errors=True)
                raise
    except BaseException as exc:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        if isinstance(exc, OSError) and not isinstance(exc, HFTSVError):
            raise _write_failure(shown, exc, scratch) from exc
        raise


def write_file_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a hidden temporary file renamed over it, so ``path`` holds either its
    old content or all of ``data``; permissions follow the umask. A failure raises
    :class:`~hf_tsv.errors.OutputWriteError` and leaves nothing behind.

    Example:
        >>> write_file_atomic("/tmp/hf-tsv-example.txt", "hello")  # doctest: +SKIP
        PosixPath('/tmp/hf-tsv-example.txt')
    """
    target = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    scratch = target.parent / _scratch_name(target.name)
    try:
        with open(scratch, "xb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(scratch, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            scratch.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, HFTSVError):
            raise _write_failure(repr(os.fspath(path)), exc, scratch) from exc
        raise
    return target


def write_json(path: str | os.PathLike, data) -> Path:
    """:func:`write_file_atomic` of ``data`` as strict, indented JSON (one trailing newline), with every secret
    redacted (:func:`hf_tsv.secrets.redact_json`: a known token or token-shaped text becomes ``***``): a NaN or inf
    is refused, naming where it is (:func:`hf_tsv.json_io.dumps_json`), and nothing is written."""
    return write_file_atomic(path, dumps_json(redact_json(data), Path(path).name))


@contextlib.contextmanager
def naming_file(path: str | os.PathLike) -> Iterator[None]:
    """Give an OSError raised in the block (e.g. ENOSPC from ``file.write``, which names no file) the file's
    name, so the one-line error says which file failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and not isinstance(exc, HFTSVError):
            exc.filename = os.fspath(path)
        raise
