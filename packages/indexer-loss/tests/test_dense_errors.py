"""Bad input to compute_index_loss_dense: the exception type and the argument it names."""

import pytest
import torch

from indexer_loss import compute_index_loss_dense


def _ok(device, B=1, H=2, S=6, L=9, D=16):
    return (
        torch.randn(B, H, S, D, device=device),
        torch.randn(B, L, D, device=device),
        torch.randn(B, S, L, device=device),
    )


@pytest.mark.parametrize(
    ("change", "exc", "name"),
    [
        (lambda q, k, x: (q, torch.randn(2, 9, 16, device=k.device), x), ValueError, "key"),
        (lambda q, k, x: (q, torch.randn(1, 9, 32, device=k.device), x), ValueError, "key"),
        (lambda q, k, x: (q, k, torch.randn(2, 6, 9, device=x.device)), ValueError, "index_score"),
        (lambda q, k, x: (q, k, torch.randn(1, 5, 9, device=x.device)), ValueError, "index_score"),
        (lambda q, k, x: (q, k, torch.randn(1, 6, 8, device=x.device)), ValueError, "index_score"),
        (lambda q, k, x: (q[0], k, x), ValueError, "query"),
        (lambda q, k, x: (q, k[0], x), ValueError, "key"),
        (lambda q, k, x: (q, k.half(), x), TypeError, "key"),
        (lambda q, k, x: (q, k, x.long()), TypeError, "index_score"),
        (lambda q, k, x: (q.int(), k, x), TypeError, "query"),
        (lambda q, k, x: (q.tolist(), k, x), TypeError, "query"),
        (lambda q, k, x: (q[:, :0], k, x), ValueError, "query"),
    ],
    ids=[
        "key-batch",
        "key-head-dim",
        "score-batch",
        "score-rows",
        "score-keys",
        "query-ndim",
        "key-ndim",
        "key-dtype",
        "score-int",
        "query-int",
        "query-not-tensor",
        "no-heads",
    ],
)
def test_bad_tensors(change, exc, name, device):
    q, k, x = change(*_ok(device))
    with pytest.raises(exc, match=name):
        compute_index_loss_dense(q, k, x, 0.25)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"chunk_offset": -1}, ValueError, "chunk_offset"),
        ({"chunk_offset": 1.5}, TypeError, "chunk_offset"),
        ({"reduction": "max"}, ValueError, "reduction"),
        ({"eps": -1e-3}, ValueError, "eps"),
        ({"scaling": "0.1"}, TypeError, "scaling"),
        ({"scaling": float("nan")}, ValueError, "scaling"),
    ],
)
def test_bad_options(kwargs, exc, name, device):
    q, k, x = _ok(device)
    args = {"scaling": 0.25, **kwargs}
    with pytest.raises(exc, match=name):
        compute_index_loss_dense(q, k, x, **args)


@pytest.mark.gpu
def test_tensors_on_different_devices(device):
    q, k, x = _ok(device)
    with pytest.raises(ValueError, match="key"):
        compute_index_loss_dense(q, k.cpu(), x, 0.25)
    with pytest.raises(ValueError, match="index_score"):
        compute_index_loss_dense(q, k, x.cpu(), 0.25)
