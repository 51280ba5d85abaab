"""The demo runner behind ``just demo``: each operator package offers a few cases (a small
realistic problem, its kernel and its reference); this runs them, times them and prints one
table."""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .bench import print_table, time_fn
from .launch import is_interpreter
from .testing import rel_err


@dataclass
class DemoCase:
    """One demo row: ``run()`` returns the kernel's output, ``reference()`` the reference's."""

    operator: str
    shape: str
    run: Callable[[], torch.Tensor]
    reference: Callable[[], torch.Tensor]
    max_rel_err: float


def demo_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not is_interpreter() else "cpu")


def run_cases(cases: Sequence[DemoCase], device: torch.device) -> list[dict]:
    rows = []
    for case in cases:
        out = case.run()
        ref = case.reference()
        err = rel_err(out.float(), ref.float())
        ms = time_fn(case.run, warmup=5, rep=20)
        rows.append(
            {
                "operator": case.operator,
                "shape": case.shape,
                "device": str(device) + (" (interpreter)" if is_interpreter() else ""),
                "rel_err": err,
                "limit": case.max_rel_err,
                "ok": "yes" if err <= case.max_rel_err else "NO",
                "time_ms": ms,
            }
        )
    return rows


def main(modules: Sequence[str]) -> int:
    """Import each ``<module>._demo`` that is installed, run its ``cases(device)``, print the
    table; exit status 1 when a case misses its error limit or fails."""
    device = demo_device()
    rows: list[dict] = []
    failed = False
    for name in modules:
        try:
            mod = importlib.import_module(f"{name}._demo")
        except ModuleNotFoundError as exc:
            if exc.name in (name, f"{name}._demo"):
                continue
            raise
        try:
            rows += run_cases(mod.cases(device), device)
        except Exception:
            traceback.print_exc()
            rows.append({"operator": name, "shape": "-", "device": str(device), "ok": "ERROR"})
            failed = True
    print_table(
        rows,
        ["operator", "shape", "device", "rel_err", "limit", "ok", "time_ms"],
        title=f"demo on {device}",
    )
    failed = failed or any(r["ok"] != "yes" for r in rows)
    return 1 if failed else 0
