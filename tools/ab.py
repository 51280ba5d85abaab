"""A/B timing of two (or more) source trees on one machine, in alternating fresh processes.

    python3 tools/ab.py CASE [--rev REV ...] [--rounds N] [--case-file PATH]

Kernel changes of a few percent hide in the spread between two bench runs on a lent GPU
(BENCHMARKS.md files record ±5% on whole-suite reruns). This runs the same measurements on
each side in turn, round after round, each time in a new process, so that drift of clocks,
caches and the host hits every side alike, and prints every side's median and range.

- ``REV``: a git revision (``HEAD``, ``HEAD~2``, a tag), ``.`` for the working tree, or a
  directory holding another tree's ``shared/`` and ``packages/`` (for a machine without the
  git history: export it with ``git archive REV shared packages | tar -x -C DIR`` and carry
  DIR along); by default ``HEAD`` and ``.``. A revision's ``shared/`` and ``packages/`` are
  exported with ``git archive``; each side's sources go first on ``sys.path``, so its
  packages are the ones imported (the header of the output names where they came from).
- ``CASE``: a function ``ab_<CASE>()`` in one of the working tree's ``packages/*/bench/``
  scripts (or in ``--case-file``) that builds its inputs and returns ``{metric: callable}``.
  The working tree's case runs against every side's packages, so both sides are measured on
  the same inputs.

Each callable is timed with :func:`tri_shared.bench.time_fn` (``do_bench`` medians on a GPU,
wall clock on the CPU). On a GPU the first callable's time per kernel (torch profiler) and
the host's time per call are shown too: a call whose host time approaches its GPU time is
bound by the host, and its ``do_bench`` figure moves with the machine's load.

On a GPU machine without the uv environment, run it with that machine's ``python3`` from
the repository root (``PYTHONPATH`` is replaced per side).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# calls queued back to back to take the host's time per call (few enough launches that the
# GPU's queue does not fill and make the host wait)
_HOST_CALLS = 20


def _source_paths(tree: Path) -> list[str]:
    """The import roots of every package in a source tree."""
    return [str(tree / "shared" / "src"), *sorted(str(p) for p in tree.glob("packages/*/src"))]


def _case_file(name: str, case_file: str | None) -> Path:
    """The file that defines ``ab_<name>``: the case file or one of the working tree's bench
    scripts. Found by its text, so that the parent process imports no package."""
    files = [Path(case_file)] if case_file else sorted(ROOT.glob("packages/*/bench/*.py"))
    for path in files:
        if f"def ab_{name}(" in path.read_text():
            return path
    where = case_file or "packages/*/bench/*.py"
    raise SystemExit(f"case: expected a function ab_{name}() in {where}, found none")


def _load_case(path: Path, name: str):
    """Import ``path`` (with the side's packages already on sys.path) and return its
    ``ab_<name>`` function."""
    spec = importlib.util.spec_from_file_location(f"_ab_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, f"ab_{name}")


def _worker(name: str, tree: str, case_file: str | None) -> None:
    """Time one side: its packages first on sys.path, then the case's callables."""
    sys.path[:0] = _source_paths(Path(tree))
    import torch

    import tri_shared
    from tri_shared.bench import kernel_times, time_fn

    metrics = _load_case(_case_file(name, case_file), name)()
    record: dict = {metric: time_fn(fn) for metric, fn in metrics.items()}
    record["source"] = str(Path(tri_shared.__file__).parent.parent)
    if torch.cuda.is_available():
        first = next(iter(metrics.values()))
        record["kernels"] = {k: v * 1e3 for k, v in kernel_times(first).items()}  # µs
        # host time per call of the first callable: calls queued without waiting for the GPU
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(_HOST_CALLS):
            first()
        record["host"] = (time.perf_counter() - start) / _HOST_CALLS * 1e3
        torch.cuda.synchronize()
    print("AB " + json.dumps(record), flush=True)


def _export(rev: str, into: Path) -> Path:
    """The source tree of ``rev``: the working tree for ``.``, a directory as it is, else an
    export of the revision."""
    if rev == ".":
        return ROOT
    if (Path(rev) / "shared" / "src").is_dir():
        return Path(rev).resolve()
    tree = into / rev.replace("/", "_")
    tree.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "shared", "packages"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise SystemExit(f"rev: expected a git revision of {ROOT} or a source tree, got {rev!r}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def _run_side(name: str, tree: Path, case_file: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, str(Path(__file__).resolve()), name, "--worker", str(tree)]
    if case_file:
        cmd += ["--case-file", case_file]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith("AB ")]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"side {tree} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    return json.loads(lines[-1][3:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", help="the name of an ab_<case>() function")
    parser.add_argument("--rev", action="append", help='git revision or "." (repeatable)')
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case-file", help="a Python file with the ab_<case>() function")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.case, args.worker, args.case_file)
        return 0
    revs = args.rev or ["HEAD", "."]
    if len(revs) < 2:
        parser.error(f"--rev: expected at least two sides, got {revs}")
    if args.rounds < 1:
        parser.error(f"--rounds: expected at least 1, got {args.rounds}")
    _case_file(args.case, args.case_file)  # fail early, before any export
    with tempfile.TemporaryDirectory() as tmp:
        trees = {f"{i}:{rev}": _export(rev, Path(tmp) / str(i)) for i, rev in enumerate(revs)}
        results: dict[str, list[dict]] = {side: [] for side in trees}
        for r in range(args.rounds):
            for side, tree in trees.items():
                results[side].append(_run_side(args.case, tree, args.case_file))
                print(f"round {r + 1}/{args.rounds} {side}: done", file=sys.stderr, flush=True)
    base = next(iter(trees))
    metrics = [m for m in results[base][0] if m not in ("kernels", "source", "host")]
    print(f"A/B of {args.case}, {args.rounds} rounds, medians (min-max), ms")
    for side in trees:
        print(f"  {side}: packages imported from {results[side][0]['source']}")
    for metric in metrics:
        ref = statistics.median(rec[metric] for rec in results[base])
        for side in trees:
            times = [rec[metric] for rec in results[side]]
            med = statistics.median(times)
            print(
                f"  {metric:<16} {side:<14} {med:9.4f}  ({min(times):.4f}-{max(times):.4f})"
                f"  {med / ref:6.3f}x of {base}"
            )
    for side in trees:
        kernels = results[side][-1].get("kernels")
        if kernels:
            top = ", ".join(f"{k[:40]} {v:.1f}" for k, v in list(kernels.items())[:6])
            host = statistics.median(rec["host"] for rec in results[side])
            print(
                f"  {metrics[0]}, {side}: GPU {sum(kernels.values()):.1f} µs in kernels"
                f" ({top}; last round), host {host:.3f} ms a call"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
