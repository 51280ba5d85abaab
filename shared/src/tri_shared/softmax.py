"""Online softmax in base 2, as used by attention-style kernels.

Scores are kept in log2 units (the caller folds ``log2(e)`` into its scale), so each
exponential is a single ``exp2``. The running state per row is the maximum ``m`` and the
sum ``l`` of ``exp2(score - m)``; each update returns the factor by which an accumulator
built against the old maximum must be rescaled.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
"""log2(e): multiply a natural-log score by this to get base-2 units."""
LN2 = tl.constexpr(0.6931471805599453)
"""ln(2): multiply a base-2 log-sum-exp by this to get the natural one."""


@triton.jit
def safe_max_shift(m):
    """The shift to subtract before ``exp2``: ``m``, or 0 where ``m`` is -inf (fully masked row).

    Subtracting -inf from -inf gives NaN; shifting a fully masked row by 0 keeps every
    ``exp2`` at exactly 0 instead.
    """
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def online_softmax_update(m_i, l_i, scores, AXIS: tl.constexpr = 1):
    """Fold a 2-D block of base-2 scores into the running softmax state along ``AXIS``.

    With ``AXIS = 1`` (the default) rows are the softmax rows: ``scores`` is
    ``[BLOCK_M, BLOCK_N]`` and ``m_i``, ``l_i`` are ``[BLOCK_M]``; with ``AXIS = 0`` the
    columns are (``m_i``, ``l_i`` of ``[BLOCK_N]``), for tiles laid out the other way round
    for the matmul. ``m_i`` and ``l_i`` start at -inf and 0; masked scores must be -inf.
    Returns ``(m_new, l_new, p, alpha)`` where ``p`` is ``exp2(scores - m_new)`` (0 at masked
    entries) and ``alpha = exp2(m_i - m_new)`` the rescale factor for an accumulator built
    against ``m_i``.
    """
    m_new = tl.maximum(m_i, tl.max(scores, AXIS))
    shift = safe_max_shift(m_new)
    alpha = tl.math.exp2(m_i - shift)
    p = tl.math.exp2(scores - tl.expand_dims(shift, AXIS))
    l_new = l_i * alpha + tl.sum(p, AXIS)
    return m_new, l_new, p, alpha


@triton.jit
def online_softmax_update_scaled(m_i, l_i, raw, scale):
    """:func:`online_softmax_update` (rows along axis 1) of the scores ``raw · scale``, for a
    positive ``scale``, without forming them: the row maximum is taken on ``raw`` and scaled
    once per row, and each exponent is one fused multiply-add ``raw · scale − m``.

    Masked entries of ``raw`` must be -inf. With ``scale <= 0`` the maximum would be wrong:
    use :func:`online_softmax_update` on ``raw * scale`` instead. Returns
    ``(m_new, l_new, p, alpha)`` as :func:`online_softmax_update` does.
    """
    m_new = tl.maximum(m_i, tl.max(raw, 1) * scale)
    shift = safe_max_shift(m_new)
    alpha = tl.math.exp2(m_i - shift)
    p = tl.math.exp2(raw * scale - shift[:, None])
    l_new = l_i * alpha + tl.sum(p, 1)
    return m_new, l_new, p, alpha


@triton.jit
def online_softmax_update_1d(m_i, l_i, scores):
    """The scalar-row form of :func:`online_softmax_update`: ``scores`` is ``[BLOCK_N]``.

    Returns ``(m_new, l_new, p, alpha)`` with scalar ``m_new``, ``l_new`` and ``alpha``.
    """
    m_new = tl.maximum(m_i, tl.max(scores, 0))
    shift = safe_max_shift(m_new)
    alpha = tl.math.exp2(m_i - shift)
    p = tl.math.exp2(scores - shift)
    l_new = l_i * alpha + tl.sum(p, 0)
    return m_new, l_new, p, alpha


@triton.jit
def log2_sum_exp2(m_i, l_i):
    """Base-2 log-sum-exp of the rows folded so far; -inf for a row that saw no valid score."""
    return tl.where(l_i > 0.0, m_i + tl.math.log2(l_i), float("-inf"))
