#!/usr/bin/env bash
# Build a separate virtualenv holding FusionBench (fusion-bench==0.2.33) next to a CPU build of torch 2.13.0,
# so that benchmarks/run_fusionbench.py can run FusionBench's TSV-M side by side with hf_tsv.
#
# Usage:
#   bash benchmarks/fusionbench_env.sh [VENV_DIR]
#
# VENV_DIR defaults to $FB_VENV, else benchmarks/.fb-venv (relative to the repository root).
# Other knobs (environment variables):
#   FB_PYTHON      interpreter that creates the venv (default: python3.11, else python3)
#   FB_TORCH_SPEC  requirement used to install torch (default: torch==2.13.0+cpu, the CPU wheel, which pip finds
#                  in its find-links folder; no CPU wheel -> pip fails at once. A plain torch==2.13.0 could resolve
#                  to PyPI's multi-GB CUDA build: the script stops with an error if the torch it got has CUDA)
#   FB_FORCE=1     run the pip steps again even if the venv already looks complete
#
# Idempotent: when the venv already has torch 2.13.0 (CPU) and fusion-bench 0.2.33 importable, it does
# nothing but say so. torch is installed first, then fusion-bench under a constraints file pinning
# torch==2.13.0, and the torch version is checked after each step.
set -euo pipefail

FB_VERSION="0.2.33"
TORCH_VERSION="2.13.0"
FB_TORCH_SPEC="${FB_TORCH_SPEC:-torch==${TORCH_VERSION}+cpu}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${1:-${FB_VENV:-$repo/benchmarks/.fb-venv}}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac

if [[ -z "${FB_PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then FB_PYTHON=python3.11; else FB_PYTHON=python3; fi
fi

say() { printf '[fusionbench_env] %s\n' "$*"; }
t_start=$(date +%s)

# Prints "OK <torch version> <fusion-bench version>" when the venv is complete, else a reason.
check_venv() {
    [[ -x "$venv/bin/python" ]] || { echo "no venv"; return 0; }
    "$venv/bin/python" - "$TORCH_VERSION" "$FB_VERSION" <<'PY' 2>/dev/null || echo "import check failed"
import sys
from importlib.metadata import version, PackageNotFoundError
want_torch, want_fb = sys.argv[1], sys.argv[2]
try:
    tv, fv = version("torch"), version("fusion-bench")
except PackageNotFoundError as e:
    print(f"missing package {e}"); sys.exit(0)
import torch
from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction  # noqa: F401
ok = tv.split("+")[0] == want_torch and fv == want_fb and torch.version.cuda is None
print(("OK " if ok else "MISMATCH ") + f"torch={tv} cuda={torch.version.cuda} fusion-bench={fv}")
PY
}

# A venv inside the work tree must never be committed: like Python >= 3.13's venv, drop a '*' .gitignore in it.
ignore_venv() { [[ -d "$venv" && ! -e "$venv/.gitignore" ]] && echo '*' >"$venv/.gitignore" || true; }

if [[ "${FB_FORCE:-0}" != "1" ]]; then
    state="$(check_venv)"
    if [[ "$state" == OK* ]]; then
        ignore_venv
        say "venv $venv already complete (${state#OK }); nothing to do (FB_FORCE=1 re-runs the pip steps)."
        exit 0
    fi
    say "venv $venv not ready: $state"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    say "creating venv $venv with $($FB_PYTHON --version 2>&1) ($FB_PYTHON)"
    "$FB_PYTHON" -m venv "$venv"
    ignore_venv
else
    say "reusing existing venv $venv"
fi
py="$venv/bin/python"

constraints="$(mktemp)"
piplog="$(mktemp)"
trap 'rm -f "$constraints" "$piplog"' EXIT
echo "torch==${TORCH_VERSION}" >"$constraints"

# pip install, quiet; its stderr is shown afterwards without the "Location 'file://...' is ignored" lines that
# this machine's pip configuration (local mirror folders that may be absent) prints for every package.
pip_install() {
    local rc=0
    "$py" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@" 2>"$piplog" || rc=$?
    grep -v "^WARNING: Location 'file://.*' is ignored" "$piplog" >&2 || true
    return "$rc"
}

torch_ok() {
    PYTHONWARNINGS=ignore "$py" - "$TORCH_VERSION" <<'PY'
import sys
from importlib.metadata import version
import torch
v = version("torch")
if v.split("+")[0] != sys.argv[1] or torch.version.cuda is not None:
    print(f"torch {v} (cuda={torch.version.cuda}) is installed, expected the {sys.argv[1]} CPU build")
    sys.exit(1)
print(f"torch {v}, cuda={torch.version.cuda}")
PY
}

t0=$(date +%s)
say "step 1/3: pip install $FB_TORCH_SPEC (constraints: torch==$TORCH_VERSION)"
pip_install "$FB_TORCH_SPEC"
tv="$(torch_ok)" || { say "ERROR: $tv"; exit 1; }
say "  installed: $tv in $(( $(date +%s) - t0 )) s"

t0=$(date +%s)
say "step 2/3: pip install fusion-bench==$FB_VERSION (constraints: torch==$TORCH_VERSION)"
pip_install "fusion-bench==$FB_VERSION"
tv="$(torch_ok)" || { say "ERROR: after fusion-bench: $tv"; exit 1; }
say "  installed in $(( $(date +%s) - t0 )) s; torch still: $tv"
if "$py" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    say "ERROR: CUDA (nvidia-*) packages were pulled into $venv:"
    "$py" -m pip list 2>/dev/null | grep -i '^nvidia-' >&2
    exit 1
fi

say "step 3/3: checking that FusionBench's TSV-M imports"
state="$(check_venv)"
if [[ "$state" != OK* ]]; then
    say "ERROR: venv check failed: $state"
    "$py" -c "from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction" || true
    exit 1
fi
say "done: ${state#OK } in $venv ($(du -sh "$venv" | cut -f1) on disk), total $(( $(date +%s) - t_start )) s"
say "run: $venv/bin/python benchmarks/run_fusionbench.py --base DIR --tasks DIR1 DIR2 ... --out merged.safetensors --json stats.json"
