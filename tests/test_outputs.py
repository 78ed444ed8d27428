"""Outputs never cost data (issue 10, defects 5, 6 and the output side of 7): an output never lands on, in or
around an input; only an empty folder or an earlier hf-tsv output is replaced, and only with --overwrite; a
target that appears meanwhile is kept; SIGTERM, SIGKILL, a full disk or a failed rename leave nothing behind
(or, for a killed process, only what the next run removes); folders get the user's umask."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import hf_tsv
from hf_tsv.cli import main
from hf_tsv.errors import OutputExistsError, OutputPathError, OutputWriteError
from hf_tsv.io import output
from hf_tsv.report import MergeReport

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = re.compile(r"\.(tmp|old)-")  # old (0.1.0) and new scratch names both hold ".tmp-"

# A child that runs the CLI with hooks: HOLD=path keeps every tensor write waiting while that file exists;
# DIE_WHEN_MOVED=path dies (like SIGKILL) right after that path is renamed away; DIE_AFTER_SWAP dies right after
# the --overwrite swap; NO_RENAMEAT2 forces the portable rename fallback.
CHILD = r"""
import os, sys, time
from pathlib import Path

from hf_tsv.io import safetensors_format as sf

hold = os.environ.get("HOLD")
original_write = sf.SafetensorsFileWriter.write

def write(self, key, tensor):
    original_write(self, key, tensor)
    while hold and os.path.exists(hold):
        time.sleep(0.02)

sf.SafetensorsFileWriter.write = write
moved = os.environ.get("DIE_WHEN_MOVED")
if moved:
    def dying(rename):
        def wrapped(src, dst, *args, **kwargs):
            rename(src, dst, *args, **kwargs)
            if Path(src) == Path(moved):
                os._exit(9)
        return wrapped
    os.rename, os.replace = dying(os.rename), dying(os.replace)
try:
    from hf_tsv.io import output
except ImportError:
    output = None
if output is not None and os.environ.get("NO_RENAMEAT2"):
    output._RENAMEAT2 = None
if output is not None and os.environ.get("DIE_AFTER_SWAP"):
    exchange = output._exchange
    def exchange_and_die(new, target):
        exchange(new, target)
        os._exit(9)
    output._exchange = exchange_and_die
from hf_tsv.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ------------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def ck(tiny, tmp_path) -> dict:
    """A private copy of the tiny checkpoints (a test that fails before its fix may destroy its inputs)."""
    root = shutil.copytree(Path(tiny["base"]).parent, tmp_path / "ck")
    return {"root": root, "base": str(root / "base"), "tasks": [str(root / Path(t).name) for t in tiny["tasks"]]}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def scratch_left(folder: Path) -> list[str]:
    return [str(p) for p in Path(folder).rglob(".*") if SCRATCH.search(p.name)]


def cli(capsys, *args) -> tuple[int, str]:
    """Run ``hf-tsv`` in this process; return the exit code and stderr."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


PROGRESS = re.compile(r"[\w -]+:\s+\d+%\|")  # a tqdm progress bar


def error_line(stderr: str) -> str:
    """The one line the CLI printed besides its progress bars (asserting there is exactly one)."""
    assert "Traceback" not in stderr
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr) if line.strip() and not PROGRESS.match(line)]
    assert len(lines) == 1, stderr
    return lines[0]


def report_alpha(folder: Path) -> float:
    return json.loads((Path(folder) / "merge_report.json").read_text())["alpha"]


def start_child(args: list, env: dict | None = None, **popen) -> subprocess.Popen:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                **(env or {})}
    return subprocess.Popen([sys.executable, "-c", CHILD, *[str(a) for a in args]], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def scratch_with_weights(parent: Path) -> list[Path]:
    """Scratch folders in ``parent`` that a writer has started to fill."""
    return [p for p in parent.iterdir() if SCRATCH.search(p.name) and (p / "model.safetensors").exists()]


def merge_api(ck: dict, out: Path, **kwargs):
    return hf_tsv.merge(ck["base"], ck["tasks"][:2], output_dir=out, **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# the bad-input rows: each exits 2 with one line and leaves the inputs and any earlier output as they were
# ------------------------------------------------------------------------------------------------------------------


def _row_is_input(ck, tmp_path):
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", ck["base"], "--overwrite"], "is the same folder as input"


def _row_dot_holds_inputs(ck, tmp_path):
    os.chdir(ck["root"])
    return ["merge", "base", "task_00", "task_01", "-o", ".", "--overwrite"], "'.' contains input 'base'"


def _row_inside_input(ck, tmp_path):
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", Path(ck["base"]) / "merged"], "lies inside input"


def _row_through_symlink(ck, tmp_path):
    (tmp_path / "alias").symlink_to(ck["root"])
    return (["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "alias" / "base", "--overwrite"],
            "is the same folder as input")


def _row_output_is_symlink(ck, tmp_path):
    (tmp_path / "link").symlink_to(ck["tasks"][2])
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "link", "--overwrite"], "symbolic link"


def _row_compress_into_input(ck, tmp_path):
    return ["compress", ck["base"], *ck["tasks"][:2], "-o", ck["tasks"][1], "--overwrite"], "same folder as input"


def _row_expand_into_tsvc(ck, tmp_path):
    hf_tsv.compress(ck["base"], ck["tasks"][:2], tmp_path / "tsvc")
    return ["expand", tmp_path / "tsvc", "--task", "0", "-o", tmp_path / "tsvc", "--overwrite"], "same folder as input"


def _row_overwrite_foreign_folder(ck, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("years of work")
    return (["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out", "--overwrite"],
            "it is not an hf-tsv output")


def _row_overwrite_fake_report(ck, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "merge_report.json").write_text('{"mine": true}')
    (tmp_path / "out" / "model.safetensors").write_text("not from hf-tsv")
    return (["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out", "--overwrite"],
            "it is not an hf-tsv output")


def _row_overwrite_output_with_extra_file(ck, tmp_path):
    merge_api(ck, tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    return (["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out", "--overwrite"],
            "it holds 'notes.txt', which hf-tsv did not write")


def _row_exists_without_overwrite(ck, tmp_path):
    merge_api(ck, tmp_path / "out")
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out"], "pass --overwrite"


def _row_output_is_a_file(ck, tmp_path):
    (tmp_path / "out").write_text("a file")
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out"], "exists and is not a folder"


def _row_below_a_file(ck, tmp_path):
    (tmp_path / "somefile").write_text("a file")
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "somefile" / "out"], "is a file, not a folder"


def _refuse_work(monkeypatch, *names):
    def fail(*args, **kwargs):
        raise AssertionError("the work started before the output path was checked")

    for name in names:
        monkeypatch.setattr(hf_tsv, name, fail)


def _row_plan_json_missing_folder(ck, tmp_path, monkeypatch):
    _refuse_work(monkeypatch, "plan")
    return ["plan", ck["base"], *ck["tasks"][:2], "--json", tmp_path / "nodir" / "plan.json"], "does not exist"


def _row_sti_json_missing_folder(ck, tmp_path, monkeypatch):
    _refuse_work(monkeypatch, "sti")
    return ["sti", ck["base"], *ck["tasks"][:2], "--json", tmp_path / "nodir" / "sti.json"], "does not exist"


def _row_eval_json_missing_folder(ck, tmp_path, monkeypatch):
    return (["eval", ck["base"], "--tasks", tmp_path / "tasks.json", "--json", tmp_path / "nodir" / "e.json"],
            "does not exist; create it first")


def _row_json_is_a_folder(ck, tmp_path, monkeypatch):
    _refuse_work(monkeypatch, "plan")
    (tmp_path / "plan.json").mkdir()
    return ["plan", ck["base"], *ck["tasks"][:2], "--json", tmp_path / "plan.json"], "it is a folder"


def _row_json_inside_input(ck, tmp_path, monkeypatch):
    _refuse_work(monkeypatch, "plan")
    return (["plan", ck["base"], *ck["tasks"][:2], "--json", Path(ck["base"]) / "config.json"],
            "lies inside input")


def _open_filling_the_disk(real_open):
    """``open`` whose write-mode files fail like a full disk after 4 KiB."""

    class Full:
        def __init__(self, f):
            self._f, self._written = f, 0

        def write(self, data):
            self._written += len(data)
            if self._written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

    def fake(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "w" in mode else f

    return fake


def _row_disk_full(ck, tmp_path, monkeypatch):
    from hf_tsv.io import safetensors_format

    monkeypatch.setattr(safetensors_format, "open", _open_filling_the_disk(open), raising=False)
    return (["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out"],
            "could not write 'TMP/out' (model.safetensors): No space left on device")


def _row_disk_full_on_overwrite(ck, tmp_path, monkeypatch):
    from hf_tsv.io import safetensors_format

    merge_api(ck, tmp_path / "out", alpha=0.5)
    monkeypatch.setattr(safetensors_format, "open", _open_filling_the_disk(open), raising=False)
    return (["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out", "--overwrite"],
            "No space left on device")


def _row_flush_io_error(ck, tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out"], "Input/output error"


def _row_target_appears_meanwhile(ck, tmp_path, monkeypatch):
    save_report = MergeReport.save  # the last file a merge writes into its temporary folder

    def and_someone_writes_the_target(report, folder):
        save_report(report, folder)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "theirs.txt").write_text("the other run's output")

    monkeypatch.setattr(MergeReport, "save", and_someone_writes_the_target)
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out", "--overwrite"], "appeared while"


def _row_target_changes_meanwhile(ck, tmp_path, monkeypatch):
    merge_api(ck, tmp_path / "out", alpha=0.5)
    save_report = MergeReport.save  # the last file a merge writes into its temporary folder

    def and_someone_adds_a_file(report, folder):
        save_report(report, folder)
        (tmp_path / "out" / "notes.txt").write_text("added while the merge ran")

    monkeypatch.setattr(MergeReport, "save", and_someone_adds_a_file)
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out", "--overwrite"], "changed while"


def _row_final_rename_fails(ck, tmp_path, monkeypatch):
    def refused(*args):
        ctypes.set_errno(errno.EACCES)
        return -1

    monkeypatch.setattr(output, "_RENAMEAT2", refused)
    for name in ("rename", "replace"):
        real = getattr(os, name)

        def refuse_scratch(src, dst, *args, _real=real, **kwargs):
            if SCRATCH.search(Path(src).name) and Path(src).is_dir():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))
            return _real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, refuse_scratch)
    return ["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out"], "Permission denied"


def _row_card_write_fails(ck, tmp_path, monkeypatch):
    merge_api(ck, tmp_path / "out")
    (tmp_path / "out" / "README.md").write_text("the card before")
    real = os.replace

    def disk_full(src, dst, *args, **kwargs):
        if Path(dst).parent == tmp_path / "out":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full)
    return ["card", tmp_path / "out"], "No space left on device"


ROWS = [
    pytest.param(_row_is_input, id="OUT-01"),
    pytest.param(_row_dot_holds_inputs, id="OUT-02"),
    pytest.param(_row_inside_input, id="OUT-03"),
    pytest.param(_row_through_symlink, id="OUT-04"),
    pytest.param(_row_output_is_symlink, id="OUT-05"),
    pytest.param(_row_compress_into_input, id="OUT-06"),
    pytest.param(_row_expand_into_tsvc, id="OUT-07"),
    pytest.param(_row_overwrite_foreign_folder, id="OUT-08"),
    pytest.param(_row_overwrite_fake_report, id="OUT-09"),
    pytest.param(_row_overwrite_output_with_extra_file, id="OUT-10"),
    pytest.param(_row_exists_without_overwrite, id="OUT-11"),
    pytest.param(_row_output_is_a_file, id="OUT-12"),
    pytest.param(_row_below_a_file, id="OUT-13"),
    pytest.param(_row_plan_json_missing_folder, id="OUT-14"),
    pytest.param(_row_sti_json_missing_folder, id="OUT-15"),
    pytest.param(_row_eval_json_missing_folder, id="OUT-16"),
    pytest.param(_row_json_is_a_folder, id="OUT-17"),
    pytest.param(_row_json_inside_input, id="OUT-18"),
    pytest.param(_row_disk_full, id="OUT-19"),
    pytest.param(_row_disk_full_on_overwrite, id="OUT-20"),
    pytest.param(_row_flush_io_error, id="OUT-21"),
    pytest.param(_row_target_appears_meanwhile, id="OUT-22"),
    pytest.param(_row_target_changes_meanwhile, id="OUT-23"),
    pytest.param(_row_final_rename_fails, id="OUT-24"),
    pytest.param(_row_card_write_fails, id="OUT-25"),
]


@pytest.mark.parametrize("row", ROWS)
def test_bad_output(row, ck, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = (ck, tmp_path, monkeypatch) if row.__code__.co_argcount == 3 else (ck, tmp_path)
    argv, fragment = row(*args)
    before = snapshot(tmp_path)
    code, err = cli(capsys, *argv)
    line = error_line(err)
    assert code == 2, err
    assert re.match(r"hf-tsv \w+: error: ", line), line
    assert fragment.replace("TMP", str(tmp_path)) in line
    after = snapshot(tmp_path)
    # nothing that was there changed, and nothing new is left (a target written by "another run" excepted)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not scratch_left(tmp_path)
    new = set(after) - set(before) - {"out/theirs.txt", "out/notes.txt"}
    assert not new, new


@pytest.mark.parametrize("call, fragment", [
    pytest.param(lambda r, ck: r.save_pretrained(ck["base"], overwrite=True), "same folder as input", id="OUT-26"),
    pytest.param(lambda r, ck: r.save_pretrained(ck["root"], overwrite=True), "contains input", id="OUT-27"),
    pytest.param(lambda r, ck: hf_tsv.compress(ck["base"], ck["tasks"][:2], Path(ck["tasks"][0]) / "tsvc"),
                 "lies inside input", id="OUT-28"),
])
def test_api_never_writes_over_an_input(call, fragment, ck, tmp_path):
    result = hf_tsv.merge(ck["base"], ck["tasks"][:2])
    before = snapshot(tmp_path)
    with pytest.raises(OutputPathError, match=fragment):
        call(result, ck)
    assert snapshot(tmp_path) == before and not scratch_left(tmp_path)


@pytest.mark.parametrize("row", [pytest.param(0, id="OUT-29")])
def test_output_around_a_hub_snapshot_is_refused(row, tiny, tmp_path, monkeypatch, capsys):
    """OUT-29: a Hub input's snapshot (and the cache folder holding it) is an input too."""
    from hub_server import running_hub
    from huggingface_hub import HfApi

    with running_hub(tmp_path / "hub"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        api = HfApi()
        for name, folder in [("base", tiny["base"]), ("ft0", tiny["tasks"][0]), ("ft1", tiny["tasks"][1])]:
            api.create_repo(f"ns/{name}")
            api.upload_folder(repo_id=f"ns/{name}", folder_path=folder)
        hf_tsv.merge("ns/base", ["ns/ft0", "ns/ft1"], output_dir=tmp_path / "first")
        resolved = hf_tsv.io.resolve_model("ns/ft1")
        snapshot_dir = Path(resolved.reader.folder)
        before = snapshot(snapshot_dir.parent.parent)
        for target in (snapshot_dir, snapshot_dir.parent, snapshot_dir / "out"):
            code, err = cli(capsys, "merge", "ns/base", "ns/ft0", "ns/ft1", "-o", target, "--overwrite")
            assert code == 2 and "input 'ns/ft1'" in error_line(err), err
        # after resolving, the folders the snapshot's files link into count too
        blobs = {loc.path for loc in output.input_locations([resolved])}
        assert any(p.name == "blobs" for p in blobs) and snapshot_dir.resolve() in blobs
        with pytest.raises(OutputPathError, match="lies inside input 'ns/ft1'"):
            output.check_output_dir(next(p for p in blobs if p.name == "blobs") / "x", True, inputs=[resolved])
        assert snapshot(snapshot_dir.parent.parent) == before


@contextlib.contextmanager
def unprivileged():
    """Run the block as user nobody when this process is root (root may write anywhere)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.mark.parametrize("row", [pytest.param(0, id="OUT-30")])
def test_parent_not_writable(row, ck, capsys):
    """OUT-30: the output's folder is not writable by this user."""
    place = Path(tempfile.mkdtemp(prefix="hf-tsv-readonly-"))  # outside tmp_path, which only root may enter
    try:
        place.chmod(0o755)
        (place / "ro").mkdir()
        (place / "ro").chmod(0o555)
        with unprivileged():
            code, err = cli(capsys, "merge", ck["base"], *ck["tasks"][:2], "-o", place / "ro" / "out")
        assert code == 2, err
        assert "is not writable by this user" in error_line(err)
        assert list((place / "ro").iterdir()) == []
    finally:
        shutil.rmtree(place)


@pytest.mark.parametrize("row", [pytest.param(0, id="OUT-31")])
def test_real_write_failure_file_size_limit(row, ck, tmp_path):
    """OUT-31: a real failed write (RLIMIT_FSIZE: writes past 16 KiB fail with EFBIG, as a full disk would)."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    cmd = [sys.executable, "-m", "hf_tsv.cli", "merge", ck["base"], *ck["tasks"][:2], "-o", str(tmp_path / "out")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    assert "(model.safetensors): File too large" in error_line(proc.stderr)
    assert not (tmp_path / "out").exists() and not scratch_left(tmp_path)


@pytest.mark.parametrize("row", [pytest.param(0, id="OUT-32")])
def test_two_merges_to_one_output(row, ck, tmp_path):
    """OUT-32: two merges started together into the same -o (no --overwrite): exactly one wins, the other exits 2
    and the winner's output is intact."""
    hold = tmp_path / "hold"
    hold.touch()
    children = {alpha: start_child(["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out", "--alpha", alpha],
                                   env={"HOLD": str(hold)}) for alpha in ("0.5", "0.7")}
    try:
        wait_for(lambda: len(scratch_with_weights(tmp_path)) == 2)  # both are past their checks, mid-write
        hold.unlink()
        results = {}
        for alpha, child in children.items():
            err = child.communicate(timeout=120)[1]
            results[alpha] = (child.returncode, err)
    finally:
        for child in children.values():
            child.kill()
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], results
    winner = next(alpha for alpha, (code, _) in results.items() if code == 0)
    loser_err = next(err for code, err in results.values() if code == 2)
    assert "appeared while hf-tsv was writing" in error_line(loser_err)
    assert report_alpha(tmp_path / "out") == float(winner)
    from transformers import CLIPVisionModel

    CLIPVisionModel.from_pretrained(str(tmp_path / "out"))
    assert not scratch_left(tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# signals and crashes
# ------------------------------------------------------------------------------------------------------------------


def test_sigterm_mid_write_cleans_up(ck, tmp_path):
    hold = tmp_path / "hold"
    hold.touch()
    child = start_child(["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out"], env={"HOLD": str(hold)})
    try:
        wait_for(lambda: scratch_with_weights(tmp_path))
        child.send_signal(signal.SIGTERM)
        err = child.communicate(timeout=60)[1]
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err
    assert not (tmp_path / "out").exists()
    assert not scratch_left(tmp_path)


def test_sigkill_leftovers_are_removed_by_the_next_run(ck, tmp_path):
    hold = tmp_path / "hold"
    hold.touch()
    child = start_child(["merge", ck["base"], *ck["tasks"][:2], "-o", tmp_path / "out"], env={"HOLD": str(hold)})
    try:
        wait_for(lambda: scratch_with_weights(tmp_path))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    finally:
        child.kill()
    dead = scratch_with_weights(tmp_path)
    assert len(dead) == 1 and str(child.pid) in dead[0].name
    # scratch folders of a live process (this one) and of another host are not touched
    alive = tmp_path / f".x.tmp-hf-tsv.{output.HOST}.{os.getpid()}.0a1b2c3d"
    elsewhere = tmp_path / f".x.tmp-hf-tsv.other-{output.HOST}.{child.pid}.0a1b2c3d"
    alive.mkdir()
    elsewhere.mkdir()
    merge_api(ck, tmp_path / "next")  # the next run into the same folder
    assert not dead[0].exists()
    assert alive.is_dir() and elsewhere.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["ck", "hold", "next"]


def test_overwrite_killed_mid_swap_never_leaves_the_target_missing(ck, tmp_path):
    """The process dies right after it renames the old output away (if it ever does): the target still exists."""
    out = tmp_path / "out"
    merge_api(ck, out, alpha=0.5)
    child = start_child(["merge", ck["base"], *ck["tasks"][:2], "-o", out, "--overwrite", "--alpha", "0.7"],
                        env={"DIE_WHEN_MOVED": str(out)})
    child.communicate(timeout=120)
    assert out.is_dir() and report_alpha(out) in (0.5, 0.7)
    merge_api(ck, tmp_path / "next")  # the next run sweeps whatever the dead one left
    assert not scratch_left(tmp_path)


def test_overwrite_killed_right_after_the_swap(ck, tmp_path):
    """Dying between the swap and the removal of the old copy: the new output is in place; the next run removes
    the old copy."""
    out = tmp_path / "out"
    merge_api(ck, out, alpha=0.5)
    child = start_child(["merge", ck["base"], *ck["tasks"][:2], "-o", out, "--overwrite", "--alpha", "0.7"],
                        env={"DIE_AFTER_SWAP": "1"})
    child.communicate(timeout=120)
    assert child.returncode == 9
    assert report_alpha(out) == 0.7
    assert len(scratch_left(tmp_path)) == 1
    merge_api(ck, tmp_path / "next")
    assert not scratch_left(tmp_path)


def test_portable_fallback_restores_a_target_moved_away_by_a_dead_run(ck, tmp_path):
    """Without renameat2 the swap is two renames; a process that dies between them leaves the old output in a
    backup, which the next run into the same folder renames back."""
    out = tmp_path / "out"
    merge_api(ck, out, alpha=0.5)
    expected = snapshot(out)
    child = start_child(["merge", ck["base"], *ck["tasks"][:2], "-o", out, "--overwrite", "--alpha", "0.7"],
                        env={"DIE_WHEN_MOVED": str(out), "NO_RENAMEAT2": "1"})
    child.communicate(timeout=120)
    assert child.returncode == 9
    assert not out.exists()  # the documented weaker guarantee of the fallback
    merge_api(ck, tmp_path / "next")
    assert snapshot(out) == expected
    assert not scratch_left(tmp_path)


def test_portable_fallback_merges_and_overwrites(ck, tmp_path, monkeypatch):
    monkeypatch.setattr(output, "_RENAMEAT2", None)
    out = tmp_path / "out"
    merge_api(ck, out, alpha=0.5)
    merge_api(ck, out, alpha=0.7, overwrite=True)
    assert report_alpha(out) == 0.7
    with pytest.raises(OutputExistsError, match="appeared while"):
        with output.atomic_output_dir(tmp_path / "late") as scratch:
            output.write_file_atomic(scratch / "config.json", "{}")
            (tmp_path / "late").mkdir()
            (tmp_path / "late" / "theirs").write_text("x")
    assert (tmp_path / "late" / "theirs").read_text() == "x"
    assert not scratch_left(tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# permissions, helpers, and "every write goes through the helpers"
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_output_folders_follow_the_umask(umask, ck, tmp_path):
    previous = os.umask(umask)
    try:
        merge_api(ck, tmp_path / "out")
        hf_tsv.compress(ck["base"], ck["tasks"][:2], tmp_path / "tsvc")
    finally:
        os.umask(previous)
    for folder in (tmp_path / "out", tmp_path / "tsvc"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
        for file in folder.iterdir():
            assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file


def test_overwrite_replaces_an_earlier_output_and_an_empty_folder(ck, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    merge_api(ck, out, alpha=0.5)  # an empty folder holds nothing to lose
    hf_tsv.write_card(out)  # the card's files belong to an hf-tsv output
    merge_api(ck, out, alpha=0.7, overwrite=True)
    assert report_alpha(out) == 0.7 and not (out / "README.md").exists()
    tsvc = hf_tsv.compress(ck["base"], ck["tasks"][:2], tmp_path / "tsvc").folder
    hf_tsv.compress(ck["base"], ck["tasks"][:2], tsvc, overwrite=True, rank_fraction=0.5)
    assert json.loads((tsvc / "tsv_c.json").read_text())["k"] == "floor(0.5*r)"
    assert not scratch_left(tmp_path)


def test_write_file_atomic_keeps_the_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "plan.json"
    output.write_json(target, {"v": 1})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OutputWriteError, match="could not write .*plan.json.*Input/output error"):
        output.write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_sti_and_plan_json_are_written(ck, tmp_path, capsys):
    code, err = cli(capsys, "sti", ck["base"], *ck["tasks"][:2], "--json", tmp_path / "sti.json")
    assert code == 0, err
    assert json.loads((tmp_path / "sti.json").read_text())["k"] == "floor(r/T)"
    code, err = cli(capsys, "plan", ck["base"], *ck["tasks"][:2], "--json", tmp_path / "plan.json")
    assert code == 0 and json.loads((tmp_path / "plan.json").read_text())["num_tasks"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "plan.json", "sti.json"]


WRITES = re.compile(r"\.write_text\(|\.write_bytes\(|\bopen\([^)]*[\"'][wax]b?\+?[\"']|json\.dump\(|os\.replace\(|"
                    r"os\.rename\(|save_file\(|torch\.save\(|tempfile\.mkdtemp\(")
# the helpers themselves, and the one writer that fills their scratch folders tensor by tensor
ALLOWED = {"io/output.py": None, "io/safetensors_format.py": {'self._file = open(self.path, "wb")'}}
NOT_OUTPUTS = ("bench/", "synthetic.py")  # the benchmark's cache and the generated examples: not user outputs


def test_every_write_goes_through_the_output_helpers():
    package = ROOT / "hf_tsv"
    offenders = []
    for file in sorted(package.rglob("*.py")):
        name = file.relative_to(package).as_posix()
        if name.startswith(NOT_OUTPUTS) or (name in ALLOWED and ALLOWED[name] is None):
            continue
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if WRITES.search(line) and line.strip() not in (ALLOWED.get(name) or ()):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "write through hf_tsv.io.output instead:\n" + "\n".join(offenders)


def test_hftsv_output_marker():
    """What makes a folder an earlier hf-tsv output (documented in hf_tsv.io.output)."""
    assert output._is_merge_report({"method": "ta", "versions": {"hf-tsv": "0.1.0"}})
    assert not output._is_merge_report({"method": "ta", "versions": {}})
    assert not output._is_merge_report(["method"])
    assert output._is_tsvc_index({"format": "hf-tsv/tsv-c"})
    assert not output._is_tsvc_index({"format": "other"})


def test_tensor_bytes_survive_the_round_trip(ck, tmp_path):
    """The atomic folder changes nothing in the weights: the written folder equals the in-memory merge."""
    from conftest import load_state

    merged = merge_api(ck, tmp_path / "out")
    memory = hf_tsv.merge(ck["base"], ck["tasks"][:2]).state_dict()
    written = load_state(merged.folder)
    assert written.keys() == memory.keys() and all(torch.equal(written[k], memory[k]) for k in memory)
