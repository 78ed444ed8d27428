#!/usr/bin/env bash
# One-step set-up and run, for a fresh machine or an existing checkout.
#   bash dev.sh example   # set up .venv, merge tiny generated checkpoints, print the STI summary
#   bash dev.sh test      # set up .venv, run ruff and the default test suite
#   bash dev.sh bench     # set up .venv and the data packages, build and run the offline benchmark (--quick: small)
#   bash dev.sh setup     # set up .venv only
# torch is installed first and pinned (2.13.0, CPU wheel): an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${HF_TSV_VENV:-.venv}
TORCH_PIN=torch==2.13.0
# Real data for the offline benchmark and Chromium for the Space's browser test (Debian packages); the text suite
# also reads Debian's package index itself (/var/lib/apt/lists, filled by apt-get update).
DEB_PACKAGES=(dataset-fashion-mnist openclipart-png fonts-noto-color-emoji unicode-data chromium chromium-driver
    wordnet-base fortunes fortunes-min)

apt_index_missing() {
    ! compgen -G "/var/lib/apt/lists/*_main_binary-*_Packages*" >/dev/null
}

system_packages() {
    command -v dpkg >/dev/null 2>&1 || { echo "note: not a Debian system; tests needing ${DEB_PACKAGES[*]} will skip" >&2; return 0; }
    local missing=() p sudo=""
    for p in "${DEB_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && ! apt_index_missing && return 0
    if [ "$(id -u)" != 0 ]; then
        if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
            echo "note: ${missing[*]:-the apt package index} missing and apt-get needs root; tests that need it will skip" >&2
            return 0
        fi
    fi
    local apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get)
    if apt_index_missing; then  # a fresh container ships without the index: the text suite's tasks need it
        "${apt[@]}" update -q >/dev/null || echo "warning: apt-get update failed; the text suite will skip" >&2
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    "${apt[@]}" install -y -q "${missing[@]}" >/dev/null || { "${apt[@]}" update -q >/dev/null &&
        "${apt[@]}" install -y -q "${missing[@]}" >/dev/null; } ||
        echo "warning: could not install ${missing[*]}; tests that need them will skip" >&2
}

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
    test) system_packages; setup; shift; "$VENV/bin/ruff" check .; "$VENV/bin/python" -m pytest -q "$@" ;;
    bench) system_packages; setup; shift; "$VENV/bin/hf-tsv" bench build "$@"; "$VENV/bin/hf-tsv" bench run "$@" ;;
    *) echo "usage: bash dev.sh {example|test|bench|setup} [args...]" >&2; exit 2 ;;
esac
