"""The DeepSeek Sparse Attention indexer loss in Triton: sparse top-k attention target and KL, fused, with the gradient to the indexer scores."""

__all__: list[str] = []
__version__ = "0.1.0"
