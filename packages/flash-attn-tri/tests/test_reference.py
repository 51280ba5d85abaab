"""The reference itself: agrees with PyTorch SDPA where SDPA has the option, and the
conventions (bottom-right causal, empty rows) hold."""

import pytest
import torch
import torch.nn.functional as F

from flash_attn_tri.reference import attention_mask_ref, attention_ref
from tri_shared.testing import assert_close, randn


@pytest.mark.parametrize("causal", [False, True])
def test_matches_sdpa(causal):
    q = randn((2, 13, 4, 16), seed=1, dtype=torch.float64)
    k = randn((2, 13, 2, 16), seed=2, dtype=torch.float64)
    v = randn((2, 13, 2, 8), seed=3, dtype=torch.float64)
    out, _ = attention_ref(q, k, v, causal=causal, compute_dtype=torch.float64)
    kk, vv = k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)
    want = F.scaled_dot_product_attention(
        q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2), is_causal=causal
    ).transpose(1, 2)
    assert_close(out, want, max_rel_err=1e-12)


def test_causal_is_bottom_right():
    mask = attention_mask_ref(2, 5, causal=True)
    assert mask.tolist() == [[True, True, True, True, False], [True] * 5]
    mask = attention_mask_ref(5, 2, causal=True)
    assert mask[:3].any().item() is False
    assert mask[3].tolist() == [True, False]


def test_window():
    mask = attention_mask_ref(4, 4, window_size=(1, 0))
    want = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]).bool()
    assert torch.equal(mask, want)


def test_empty_rows_give_zero_and_inf_lse():
    q = randn((1, 5, 1, 8), seed=4)
    k = randn((1, 2, 1, 8), seed=5)
    v = randn((1, 2, 1, 8), seed=6)
    out, lse = attention_ref(q, k, v, causal=True)
    assert torch.equal(out[0, :3], torch.zeros(3, 1, 8))
    assert torch.isinf(lse[0, 0, :3]).all() and (lse[0, 0, :3] > 0).all()
    assert torch.isfinite(out).all()


def test_dropout_needs_mask():
    q = randn((1, 3, 1, 8), seed=4)
    with pytest.raises(ValueError, match="dropout_mask"):
        attention_ref(q, q, q, dropout_p=0.5)
