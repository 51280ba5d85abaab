"""The DeepSeek Sparse Attention indexer loss in Triton: sparse top-k attention target and KL,
fused, with the gradient to the indexer scores."""

from .dense import compute_index_loss_dense
from .sparse import compute_index_loss_sparse, sparse_attention_target

__all__: list[str] = [
    "compute_index_loss_dense",
    "compute_index_loss_sparse",
    "sparse_attention_target",
]
__version__ = "0.1.0"
