"""The testing helpers must be able to fail."""

import pytest
import torch

from tri_shared.testing import assert_close, poison, rand, randint, randn, randperm, rel_err


def test_rel_err():
    e = torch.tensor([3.0, 4.0])
    assert rel_err(e, e) == 0
    assert rel_err(torch.tensor([3.0, 4.5]), e) == pytest.approx(0.1)
    assert rel_err(torch.tensor([1.0]), torch.tensor([0.0])) == 1.0


def test_assert_close_reports_where():
    e = torch.zeros(3, 4)
    e[:] = 1
    a = e.clone()
    a[2, 1] = 3
    with pytest.raises(AssertionError, match=r"out: relative error .* at \(2, 1\) \(got 3"):
        assert_close(a, e, max_rel_err=1e-3, name="out")
    assert assert_close(e, e, max_rel_err=0.0) == 0.0


def test_assert_close_rejects_nan_and_unwritten():
    e = torch.ones(5)
    a = poison(torch.empty(5))
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(a, e, max_rel_err=1.0)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.ones(4), e, max_rel_err=1.0)


def test_poison_and_seeded_inputs():
    assert torch.isnan(poison(torch.zeros(3))).all()
    assert (poison(torch.zeros(3, dtype=torch.int32)) == -1).all()
    assert torch.equal(randn((4,), seed=1), randn((4,), seed=1))
    assert not torch.equal(randn((4,), seed=1), randn((4,), seed=2))
    assert randn((2,), seed=0, dtype=torch.float16).dtype == torch.float16
    u = rand((100,), seed=0, low=2.0, high=3.0)
    assert (u >= 2).all() and (u < 3).all()
    assert randint(0, 5, (50,), seed=0).max() < 5
    assert sorted(randperm(10, seed=0).tolist()) == list(range(10))
