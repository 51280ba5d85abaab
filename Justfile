# The commands people run. `uv run just <recipe>` runs them inside the workspace environment.

set shell := ["bash", "-euo", "pipefail", "-c"]

packages := "tri-shared gated-delta flash-attn-tri indexer-loss"

# list the recipes
default:
    @just --list

# create or update .venv from uv.lock (all packages editable, dev tools)
setup:
    uv sync --locked

# run every operator on a small problem, check it against its reference, print a table
demo:
    python tools/demo.py
    @python tools/show_plots.py

# the test suite, or one package's tests (CPU: Triton interpreter; GPU: everything)
test package="":
    #!/usr/bin/env bash
    set -euo pipefail
    target=""
    if [ -n "{{ package }}" ]; then target=$(python tools/pkg.py dir "{{ package }}"); fi
    python -m pytest -n auto -q $target

# ruff lint and format check
lint:
    ruff check .
    ruff format --check .

# apply ruff's formatting and safe fixes
fmt:
    ruff format .
    ruff check --fix .

# registers, spills and per-loop SASS instruction mix of kernels compiled for sm_90a (no GPU)
kernel-stats *recipes:
    python tools/kernel_stats.py {{ recipes }}

# benchmarks of one package, or of all (needs a GPU); results under $OUT or bench-results/
bench package="":
    bash tools/gpu.sh bench {{ package }}

# time two source trees against each other on a GPU, alternating processes (tools/ab.py)
ab case *args:
    python tools/ab.py {{ case }} {{ args }}

# build wheels and sdists with workspace sources off, each into dist/<package>/
build package="":
    for p in {{ if package == "" { packages } else { package } }}; do \
        python tools/pkg.py dir "$p" >/dev/null; \
        rm -rf "dist/$p"; \
        uv build --quiet --no-sources --package "$p" --out-dir "dist/$p"; \
        echo "built dist/$p: $(ls dist/$p | tr '\n' ' ')"; \
    done

# install a package's wheel (and tri-shared's) into a fresh venv and run its tests there
check-wheel package:
    bash tools/check_wheel.sh {{ package }}

# bump a package's version (part: major, minor, patch), date its changelog, commit and tag
release package part:
    python tools/release.py {{ package }} {{ part }}
