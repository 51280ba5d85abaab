"""Benchmark helpers (timing, rates, table, CSV, plot)."""

import csv
import os
import time

import pytest

from tri_shared.bench import (
    Ceilings,
    choice,
    format_table,
    gbps,
    host_time_us,
    import_source,
    int_list,
    kernel_times,
    parse_flags,
    patch_source,
    plot,
    results_dir,
    tflops,
    time_fn,
    timed_calls,
    write_csv,
)


def test_rates():
    assert tflops(2e12, 1000.0) == pytest.approx(2.0)
    assert gbps(4e9, 2.0) == pytest.approx(2000.0)
    c = Ceilings(copy_gbps=4000.0, matmul_tflops=800.0, device_name="x")
    assert c.fraction_of_copy(3600.0) == pytest.approx(0.9)
    assert c.fraction_of_matmul(400.0) == pytest.approx(0.5)


def test_time_fn_measures_something():
    calls = []
    ms = time_fn(lambda: calls.append(sum(range(20000))), warmup=1, rep=3)
    assert ms > 0 and len(calls) >= 2


def test_host_time_us_is_the_time_a_call_takes_to_issue():
    calls = []

    def call():
        calls.append(None)
        time.sleep(0.002)

    us = host_time_us(call, calls=3)
    assert len(calls) == 4  # one to warm up, then the three timed
    assert 2000 <= us < 200_000
    calls.clear()
    host_time_us(call, calls=2, warm=False)
    assert len(calls) == 2


class _Timed:
    @staticmethod
    def outer(x):
        return _Timed.inner(x) + 1

    @staticmethod
    def inner(x):
        time.sleep(0.001)
        return 2 * x


def test_timed_calls_adds_each_functions_time_and_calls_and_puts_them_back():
    outer, inner = _Timed.outer, _Timed.inner
    totals = {"_Timed.inner": [5, 1]}  # added to, not replaced
    with timed_calls([(_Timed, "outer"), (_Timed, "inner")], totals) as seen:
        assert seen is totals
        assert [_Timed.outer(x) for x in (1, 2, 3)] == [3, 5, 7]
    assert _Timed.outer is outer and _Timed.inner is inner
    assert totals["_Timed.outer"][1] == 3 and totals["_Timed.inner"][1] == 4
    # inclusive: the outer function's time holds the inner one's (three sleeps of 1 ms)
    assert totals["_Timed.outer"][0] >= totals["_Timed.inner"][0] - 5 >= 3_000_000
    assert _Timed.outer(1) == 3  # untimed again
    assert totals["_Timed.outer"][1] == 3


def test_time_fn_sets_grads_to_none_before_each_call():
    import torch

    w = torch.ones(3, requires_grad=True)
    seen = []

    def step():
        seen.append(w.grad)  # None each time: nothing left from the call before
        (2.0 * w).sum().backward()

    time_fn(step, warmup=1, rep=3, grad_to_none=[w])
    assert len(seen) >= 2 and all(g is None for g in seen)
    assert torch.equal(w.grad, torch.full((3,), 2.0))  # one call's gradient, not a sum


@pytest.mark.gpu
def test_kernel_times_names_the_kernels():
    import torch

    x = torch.randn(1 << 22, device="cuda")
    times = kernel_times(lambda: torch.mul(x, 2.0), iters=3)
    assert times and all(ms > 0 for ms in times.values())
    assert any("elementwise" in name or "mul" in name for name in times), times


def test_table_csv_and_plot(tmp_path, monkeypatch):
    rows = [
        {"n": 1, "impl": "a", "ms": 1.5},
        {"n": 2, "impl": "a", "ms": 2.5},
        {"n": 1, "impl": "b", "ms": float("nan")},
    ]
    text = format_table(rows)
    assert text.splitlines()[0].split() == ["n", "impl", "ms"] and "2.5" in text
    path = write_csv(rows, tmp_path / "r.csv")
    assert [r["impl"] for r in csv.DictReader(path.open())] == ["a", "a", "b"]
    pytest.importorskip("matplotlib")
    png = plot(rows, x="n", y="ms", series="impl", path=tmp_path / "r.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert results_dir("pkg") == tmp_path / "out" and (tmp_path / "out").is_dir()


def test_env_set_restores_or_removes(monkeypatch):
    from tri_shared.bench import env_set

    monkeypatch.setenv("TRI_SHARED_TEST_SWITCH", "a")
    with env_set("TRI_SHARED_TEST_SWITCH", "b"):
        assert os.environ["TRI_SHARED_TEST_SWITCH"] == "b"
    assert os.environ["TRI_SHARED_TEST_SWITCH"] == "a"
    monkeypatch.delenv("TRI_SHARED_TEST_SWITCH")
    seen = []

    def fail_inside():
        with env_set("TRI_SHARED_TEST_SWITCH", "c"):
            seen.append(os.environ["TRI_SHARED_TEST_SWITCH"])
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        fail_inside()
    assert seen == ["c"]
    assert "TRI_SHARED_TEST_SWITCH" not in os.environ


def test_patch_source_applies_each_edit_and_names_a_missing_place():
    source = "a = 1\nb = 2\nb = 2\n"
    edits = [("a = 1\n", "a = 1\nmark()\n", 1), ("b = 2\n", "b = 3\n", 2)]
    assert patch_source(source, edits, "tool") == "a = 1\nmark()\nb = 3\nb = 3\n"
    with pytest.raises(ValueError, match=r"tool: expected 1 occurrence\(s\) of 'c = 1'.*found 0"):
        patch_source(source, [("c = 1\n", "", 1)], "tool")
    with pytest.raises(ValueError, match=r"'b = 2'.*found 2"):
        patch_source(source, [("b = 2\n", "", 1)], "tool")


def test_import_source_imports_the_written_copy(tmp_path):
    module = import_source("VALUE = 41 + 1\n", tmp_path, "copied_kernel")
    assert module.VALUE == 42
    assert (tmp_path / "copied_kernel.py").read_text() == "VALUE = 41 + 1\n"


def test_parse_flags_converts_and_names_what_it_refuses():
    flags = {
        "--rounds": (3, int, "--rounds=N"),
        "--mode": ("a", choice({"a": "a", "b": "b"}), "--mode=a|b"),
        "--quick": (False, choice({"": True}), "--quick"),
    }
    assert parse_flags([], "tool", flags) == {"rounds": 3, "mode": "a", "quick": False}
    got = parse_flags(["--rounds=5", "--quick", "--mode=b"], "tool", flags)
    assert got == {"rounds": 5, "mode": "b", "quick": True}
    expected = r"\(expected --rounds=N, --mode=a\|b, --quick\)"
    for bad in ("--rounds=x", "--mode=c", "--quick=1", "--other", "rounds=3"):
        with pytest.raises(SystemExit, match=rf"tool: unexpected argument '{bad}' {expected}"):
            parse_flags([bad], "tool", flags)


def test_int_list_reads_comma_separated_integers():
    assert int_list("1024") == [1024]
    assert int_list("1024,2048,16384") == [1024, 2048, 16384]
    for bad in ("", "1024,", "a,b"):
        with pytest.raises(ValueError, match="invalid literal for int"):
            int_list(bad)
