"""``tools/ab.py``: each side's packages are the ones imported, and each is timed every round."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = """
import torch


def ab_tiny():
    x = torch.randn(8, 40)
    return {"softmax": lambda: torch.softmax(x, dim=-1), "sum": lambda: x.sum()}
"""


def run_ab(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *python_flags, str(ROOT / "tools/ab.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_each_side_imports_its_own_sources(tmp_path):
    cases = tmp_path / "cases.py"
    cases.write_text(CASES)
    run = run_ab("tiny", "--case-file", str(cases), "--rev", "HEAD", "--rev", ".", "--rounds", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    head = next(line for line in lines if line.strip().startswith("0:HEAD: packages"))
    work = next(line for line in lines if line.strip().startswith("1:.: packages"))
    assert str(ROOT / "shared" / "src") not in head  # an export of HEAD, not the checkout
    assert work.rstrip().endswith(str(ROOT / "shared" / "src"))
    for metric in ("softmax", "sum"):
        rows = [line for line in lines if line.strip().startswith(metric)]
        assert len(rows) == 2  # one per side, each with a ratio to the first side
        assert all("x of 0:HEAD" in row for row in rows)
    assert run.stderr.count(": done") == 4  # 2 rounds x 2 sides


def test_a_directory_is_a_side(tmp_path):
    cases = tmp_path / "cases.py"
    cases.write_text(CASES)
    run = run_ab(
        "tiny", "--case-file", str(cases), "--rev", str(ROOT), "--rev", ".", "--rounds", "1"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(f"packages imported from {ROOT / 'shared' / 'src'}") == 2


def test_the_parent_process_imports_no_package(tmp_path):
    """On the GPU machine only the sides' source trees provide the packages: a case file that
    imports them at the top (as the bench scripts do) is read, not run, by the parent."""
    cases = tmp_path / "cases.py"
    cases.write_text("import tri_shared\n" + CASES)
    # -S: no site-packages in the parent, so neither torch nor the workspace packages
    run = run_ab(
        "tiny", "--case-file", str(cases), "--rev", ".", "--rev", ".", "--rounds", "1",
        python_flags=("-S",),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count(": done") == 2


def test_bad_arguments_are_named():
    run = run_ab("no_such_case", "--rounds", "1")
    assert run.returncode != 0
    assert "ab_no_such_case" in run.stdout + run.stderr
    run = run_ab("sparse", "--rev", "HEAD")
    assert run.returncode != 0
    assert "--rev" in run.stderr
    run = run_ab("sparse", "--rev", "no-such-revision", "--rev", ".")
    assert run.returncode != 0
    assert "no-such-revision" in run.stdout + run.stderr
