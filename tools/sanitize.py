"""Run every kernel once on small, odd shapes (forward and backward, masked edges, varlen
with empty sequences, negative slots) so that ``compute-sanitizer`` can check each launch:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        python3 tools/sanitize.py [step ...]

(steps: shared_kernels, gated_delta, flash_attn, flash_attn_pinned, flash_attn_gluon,
indexer_loss; all by default.)

(The caching allocator is off so that an access past a tensor's end leaves its allocation.)
"""

import itertools
import os
import sys

import torch

if not torch.cuda.is_available():  # a dry run through the interpreter, to check the script
    os.environ["TRITON_INTERPRET"] = "1"

from tri_shared import row_softmax
from tri_shared.testing import randint, randn

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")


LOW = torch.bfloat16 if dev.type == "cuda" else torch.float16  # no bf16 in the interpreter


def rn(*shape, seed, dtype=None, scale=1.0):
    return randn(shape, seed=seed, device=dev, dtype=dtype or LOW, scale=scale)


def shared_kernels():
    row_softmax(rn(37, 1500, seed=0))


def gated_delta():
    from gated_delta import (
        chunk_gated_delta_rule,
        fused_sigmoid_gating_delta_rule_prefill,
        fused_sigmoid_gating_delta_rule_update,
    )

    lengths = [65, 0, 1, 130]
    T = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=dev)
    # two head sizes: the prefill kernel's launch settings differ from K = 128 on
    for (H, HV, K, V), layout in itertools.product(((2, 6, 96, 80), (1, 2, 32, 32)), ("kv", "vk")):
        shape = (7, HV, K, V) if layout == "kv" else (7, HV, V, K)
        pool = rn(*shape, seed=1, dtype=torch.float32, scale=0.1)
        idx = torch.tensor([3, -1, 0, 6], device=dev, dtype=torch.int32)
        gates = (
            rn(HV, seed=2, dtype=torch.float32),
            rn(T, HV, seed=3),
            rn(HV, seed=4, dtype=torch.float32),
        )
        qkv = (rn(1, T, H, K, seed=5), rn(1, T, H, K, seed=6), rn(1, T, HV, V, seed=7))
        b = rn(T, HV, seed=8)
        for op in (fused_sigmoid_gating_delta_rule_update, fused_sigmoid_gating_delta_rule_prefill):
            op(
                gates[0],
                gates[1],
                gates[2],
                1.0,
                20.0,
                *qkv,
                b,
                pool,
                idx,
                None,
                True,
                cu,
                state_layout=layout,
            )
        # speculative verify: per-step states into a buffer
        N, Tv = 3, 4
        buf_shape = (5, Tv, *shape[1:])
        buf = torch.zeros(buf_shape, device=dev)
        fused_sigmoid_gating_delta_rule_update(
            gates[0],
            rn(N * Tv, HV, seed=9),
            gates[2],
            1.0,
            20.0,
            rn(N, Tv, H, K, seed=10),
            rn(N, Tv, H, K, seed=11),
            rn(N, Tv, HV, V, seed=12),
            rn(N * Tv, HV, seed=13),
            pool,
            torch.tensor([1, 2, -1], device=dev),
            state_layout=layout,
            disable_state_update=True,
            intermediate_states_buffer=buf,
            intermediate_state_indices=torch.tensor([4, -1, 0], device=dev),
            cache_steps=Tv,
        )
    g = -torch.rand(1, 200, HV, device=dev)
    beta = torch.rand(1, 200, HV, device=dev)
    chunk_gated_delta_rule(
        rn(1, 200, H, K, seed=14),
        rn(1, 200, H, K, seed=15),
        rn(1, 200, HV, V, seed=16),
        g,
        beta,
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )


def flash_attn():
    from flash_attn_tri import flash_attn_func, flash_attn_varlen_func

    q = rn(2, 113, 6, 96, seed=20).requires_grad_()
    k = rn(2, 203, 2, 96, seed=21).requires_grad_()
    v = rn(2, 203, 2, 96, seed=22).requires_grad_()
    for kwargs in (
        {"causal": True},
        {"window_size": (17, 5), "softcap": 30.0},
        {"dropout_p": 0.1, "alibi_slopes": torch.rand(6, device=dev)},
    ):
        out = flash_attn_func(q, k, v, **kwargs)
        out.backward(torch.randn_like(out))
    lengths = [50, 0, 1, 77]
    T = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=dev, dtype=torch.int32)
    qv, kv, vv = (rn(T, 4, 40, seed=s).requires_grad_() for s in (23, 24, 25))
    out = flash_attn_varlen_func(qv, kv, vv, cu, cu, max(lengths), max(lengths), causal=True)
    out.backward(torch.randn_like(out))


def flash_attn_pinned():
    """The D = 64 launch configs pinned on Hopper (a GPU-only step: too long for a dry run
    through the interpreter)."""
    from flash_attn_tri import flash_attn_func
    from tri_shared.bench import env_set

    if dev.type != "cuda":
        return
    # each forward config (attention._HOPPER_FWD_D64), on lengths that end in a partial block
    for seqlen, causal in ((1000, False), (3000, False), (5000, True), (9000, False)):
        q, k, v = (rn(1, seqlen, 1, 64, seed=s) for s in (26, 27, 28))
        flash_attn_func(q, k, v, causal=causal)
    # and each dQ and dK/dV config pinned below 4096 tokens (_HOPPER_DQ_D64, _HOPPER_DKDV_D64;
    # the Gluon backward, which takes such calls when it can, switched off)
    with env_set("FLASH_ATTN_TRI_GLUON_BWD", "0"):
        for seqlen, causal in ((1000, False), (2000, False), (1000, True), (1500, True)):
            q, k, v = (rn(1, seqlen, 1, 64, seed=s).requires_grad_() for s in (29, 30, 31))
            out = flash_attn_func(q, k, v, causal=causal)
            out.backward(torch.randn_like(out))


def flash_attn_gluon():
    """The Gluon kernels for Hopper: the forward (forced on for D = 64 too with
    ``FLASH_ATTN_TRI_GLUON=1``) with partial blocks at both ends, GQA, causal with rows that
    see no key (sq > sk), a single key block, persistent programs of many tiles; and the
    backward kernels, fused and split, each call twice (the second from its plan)."""
    from flash_attn_tri import attention, flash_attn_func
    from tri_shared.bench import env_set

    o_via_tma, sms = attention._HOPPER_FWD_O_VIA_TMA, attention.num_sms
    # the output written with plain stores and through the copy engine
    for output_path in (False, True):
        attention._HOPPER_FWD_O_VIA_TMA = output_path
        with env_set("FLASH_ATTN_TRI_GLUON", "1"):
            shapes = ((128, True, 300, 203), (64, False, 113, 203), (128, False, 5, 9))
            for d, causal, sq, sk in shapes:
                q = rn(2, sq, 4, d, seed=40)
                k, v = rn(2, sk, 2, d, seed=41), rn(2, sk, 2, d, seed=42)
                flash_attn_func(q, k, v, causal=causal)
            # persistent programs taking many units each (the GPU taken as 3
            # multiprocessors): pairs of causal tiles, an odd block count, rows that see no
            # key
            attention.num_sms = lambda index=None: 3
            attention._PLANS.clear()  # (plans made under the real count)
            try:
                shapes = ((128, True, 1100, 1100), (64, True, 300, 203), (128, False, 300, 203))
                for d, causal, sq, sk in shapes:
                    q = rn(2, sq, 4, d, seed=46)
                    k, v = rn(2, sk, 2, d, seed=47), rn(2, sk, 2, d, seed=48)
                    flash_attn_func(q, k, v, causal=causal)
            finally:
                attention.num_sms = sms
                attention._PLANS.clear()
    attention._HOPPER_FWD_O_VIA_TMA = o_via_tma
    # the backward kernels, forced on for D = 64 and short causal too: GQA, partial blocks
    for kind in ("1", "fused"):
        with env_set("FLASH_ATTN_TRI_GLUON_BWD", kind):
            for d, causal, sq, sk in (
                (128, True, 300, 203), (64, False, 113, 203), (64, True, 300, 203),
            ):  # fmt: skip
                q = rn(2, sq, 4, d, seed=43).requires_grad_()
                k = rn(2, sk, 2, d, seed=44).requires_grad_()
                v = rn(2, sk, 2, d, seed=45).requires_grad_()
                for _ in range(2):  # (the second call: the signature's plan)
                    out = flash_attn_func(q, k, v, causal=causal)
                    out.backward(torch.randn_like(out))


def indexer_loss():
    from indexer_loss import compute_index_loss_dense, compute_index_loss_sparse

    B, H, S, L, D, topk = 2, 5, 37, 90, 192, 20
    query, key = rn(B, H, S, D, seed=30), rn(B, L, D, seed=31)
    indices = randint(-1, L + 3, (B, S, topk), seed=32, device=dev)
    score = rn(B, S, topk, seed=33, dtype=torch.float32).requires_grad_()
    compute_index_loss_sparse(
        query, key, score, indices, D**-0.5, L - S, reduction="mean"
    ).backward()
    # 33-64 heads and D = 128 in fp16/bf16 take the Gluon forward on a Hopper GPU; topk 150
    # ends in a partial 64-key block; rows 0-2 have no valid key in block 0, so they run
    # sweep 1 a second time with the online maximum
    H, D, topk = 40, 128, 150
    query, key = rn(B, H, S, D, seed=35), rn(B, L, D, seed=36)
    indices = randint(-1, L + 3, (B, S, topk), seed=37, device=dev)
    indices[:, :3, :64] = -1
    score = rn(B, S, topk, seed=38).requires_grad_()
    compute_index_loss_sparse(query, key, score, indices, D**-0.5, L - S).sum().backward()
    dense_score = rn(B, S, L, seed=34, dtype=torch.float32).requires_grad_()
    compute_index_loss_dense(query, key, dense_score, D**-0.5, 11, reduction="sum").backward()


if __name__ == "__main__":
    steps = (shared_kernels, gated_delta, flash_attn, flash_attn_pinned, flash_attn_gluon,
             indexer_loss)  # fmt: skip
    chosen = sys.argv[1:] or [s.__name__ for s in steps]
    unknown = set(chosen) - {s.__name__ for s in steps}
    if unknown:
        sys.exit(f"unknown step(s) {sorted(unknown)}; choose from {[s.__name__ for s in steps]}")
    for step in steps:
        if step.__name__ not in chosen:
            continue
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        print(f"{step.__name__}: ran", flush=True)
