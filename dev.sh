#!/usr/bin/env bash
# One-step set-up and run, for a fresh machine or an existing checkout.
#   bash dev.sh example   # set up .venv, merge tiny generated checkpoints, print the STI summary
#   bash dev.sh test      # set up .venv, run ruff and the default test suite
#   bash dev.sh setup     # set up .venv only
# torch is installed first and pinned (2.13.0, CPU wheel): an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${HF_TSV_VENV:-.venv}
TORCH_PIN=torch==2.13.0

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.hf-tsv-installed"
    local want
    want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$VENV/bin/python" -m pip install -q "$TORCH_PIN"
        "$VENV/bin/python" -m pip install -q -c <(echo "$TORCH_PIN") -e ".[dev]"
        echo "$want" > "$stamp"
    fi
}

case "${1:-}" in
    setup) setup ;;
    example) setup; shift; "$VENV/bin/hf-tsv" example "$@" ;;
    test) setup; shift; "$VENV/bin/ruff" check .; "$VENV/bin/python" -m pytest -q "$@" ;;
    *) echo "usage: bash dev.sh {example|test|setup} [args...]" >&2; exit 2 ;;
esac
