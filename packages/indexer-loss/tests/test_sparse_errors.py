"""Bad input to the sparse indexer loss: each error names the argument at fault."""

import pytest
import torch

from indexer_loss import compute_index_loss_sparse, sparse_attention_target


def inputs(B=2, H=3, S=5, D=16, L=9, topk=4):
    query = torch.randn(B, H, S, D)
    key = torch.randn(B, L, D)
    index_score = torch.randn(B, S, topk)
    indices = torch.randint(0, L, (B, S, topk))
    return query, key, index_score, indices


def call(query, key, index_score, indices, scaling=0.25, chunk_offset=0, **kw):
    return compute_index_loss_sparse(query, key, index_score, indices, scaling, chunk_offset, **kw)


@pytest.mark.parametrize(
    ("which", "shape", "argname"),
    [
        ("key", (3, 9, 16), "key"),  # batch
        ("index_score", (3, 5, 4), "index_score"),  # batch
        ("indices", (3, 5, 4), "indices"),  # batch
        ("index_score", (2, 6, 4), "index_score"),  # length S
        ("indices", (2, 6, 4), "indices"),  # length S
        ("indices", (2, 5, 7), "indices"),  # topk differs from index_score's
        ("key", (2, 9, 32), "key"),  # head dim
        ("query", (2, 5, 16), "query"),  # not 4-d
    ],
)
def test_shape_mismatch(which, shape, argname):
    args = dict(zip(("query", "key", "index_score", "indices"), inputs(), strict=True))
    old = args[which]
    args[which] = (
        torch.randint(0, 9, shape) if which == "indices" else torch.randn(shape, dtype=old.dtype)
    )
    with pytest.raises(ValueError, match=argname):
        call(**args)


def test_target_shape_mismatch():
    query, key, _, indices = inputs()
    with pytest.raises(ValueError, match="indices"):
        sparse_attention_target(query, key, indices[:, :3], 0.25)
    with pytest.raises(ValueError, match="key"):
        sparse_attention_target(query, key[:, :, :8], indices, 0.25)


def test_non_integer_indices():
    query, key, index_score, indices = inputs()
    with pytest.raises(TypeError, match="indices"):
        call(query, key, index_score, indices.float())
    with pytest.raises(TypeError, match="indices"):
        sparse_attention_target(query, key, indices.to(torch.int16), 0.25)


def test_bad_dtypes():
    query, key, index_score, indices = inputs()
    with pytest.raises(TypeError, match="key"):
        call(query, key.half(), index_score, indices)
    with pytest.raises(TypeError, match="index_score"):
        call(query, key, index_score.to(torch.int32), indices)
    with pytest.raises(TypeError, match="query"):
        call(query.to(torch.int64), key, index_score, indices)


def test_negative_chunk_offset():
    with pytest.raises(ValueError, match="chunk_offset"):
        call(*inputs(), chunk_offset=-1)
    with pytest.raises(TypeError, match="chunk_offset"):
        call(*inputs(), chunk_offset=1.5)


def test_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        call(*inputs(), reduction="batchmean")


def test_bad_scaling_and_eps():
    with pytest.raises(ValueError, match="scaling"):
        call(*inputs(), scaling=float("nan"))
    with pytest.raises(ValueError, match="eps"):
        call(*inputs(), eps=-1.0)


@pytest.mark.parametrize("which", ["key", "index_score", "indices"])
def test_different_devices(which):
    # The meta device stands in for a second device on a CPU-only machine.
    args = dict(zip(("query", "key", "index_score", "indices"), inputs(), strict=True))
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=which):
        call(**args)
