"""The hf-tsv command tunes glibc's malloc so that a merge reuses freed buffers (hf_tsv/allocator.py)."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from hf_tsv import allocator

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

# Allocates and frees a 64 MiB buffer (above glibc's largest automatic mmap threshold, 32 MiB) five times after
# SETUP, and prints the page faults of the last four: a freed buffer that was kept costs none the next time.
_FAULTS = textwrap.dedent("""
    import resource
    {setup}
    buffer = bytearray(64 << 20)
    del buffer
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        buffer = bytearray(64 << 20)  # zero-filled: every page is touched
        del buffer
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")

_PAGES = 4 * (64 << 20) // 4096


def _faults(setup: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", _FAULTS.format(setup=setup)], capture_output=True, text=True,
                          env={**clean, **env}, timeout=120, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def test_the_command_reuses_freed_buffers_where_glibc_would_fault_them_in_again():
    command = "from hf_tsv.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass"
    untuned = _faults("")
    tuned = _faults(command)
    assert untuned > _PAGES // 2  # glibc's default: every 64 MiB block is a fresh mmap
    assert tuned < _PAGES // 50  # after the command started: the freed block is reused


def test_a_user_setting_of_malloc_is_kept():
    command = "from hf_tsv.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass"
    # the user's own (here: glibc's default) trim threshold: hf-tsv changes nothing, so blocks are mmapped again
    assert _faults(command, MALLOC_MMAP_THRESHOLD_=str(128 * 1024)) > _PAGES // 2
    assert _faults(command, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072") > _PAGES // 2


def test_tuning_is_skipped_when_the_environment_tunes_malloc(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert allocator.tune_for_merging() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
    assert allocator.tune_for_merging() is False


def test_importing_hf_tsv_leaves_malloc_alone():
    assert _faults("import hf_tsv, hf_tsv.cli, hf_tsv.merge") > _PAGES // 2
