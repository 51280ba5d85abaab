"""A small hybrid decoder: Gated DeltaNet layers (gated-delta) alternating with causal GQA
attention layers (flash-attn-tri), plain PyTorch projections around them.

Prefilling a prompt with the chunked path and then decoding token by token (recurrent
update on the same state pool, attention over a growing key/value cache) must give the
outputs of one forward pass over the whole sequence.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flash_attn_tri import flash_attn_func
from gated_delta import (
    fused_sigmoid_gating_delta_rule_prefill,
    fused_sigmoid_gating_delta_rule_update,
)
from tri_shared.testing import assert_close, generator, randperm

SMALL = {"D_MODEL": 48, "H": 2, "HV": 4, "K": 16, "V": 16, "HQ": 4, "HKV": 2, "D": 16}
# Qwen3-Next-like head sizes for the GPU run
REALISTIC = {"D_MODEL": 1024, "H": 4, "HV": 8, "K": 128, "V": 128, "HQ": 8, "HKV": 2, "D": 128}


class GatedDeltaLayer(torch.nn.Module):
    def __init__(self, cfg: dict, g: torch.Generator):
        super().__init__()
        self.cfg = cfg
        H, HV, K, V, D_MODEL = cfg["H"], cfg["HV"], cfg["K"], cfg["V"], cfg["D_MODEL"]
        self.in_proj = torch.nn.Linear(D_MODEL, 2 * H * K + HV * V + 2 * HV, bias=False)
        self.out_proj = torch.nn.Linear(HV * V, D_MODEL, bias=False)
        with torch.no_grad():
            for p in (self.in_proj.weight, self.out_proj.weight):
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
        self.A_log = torch.nn.Parameter(torch.rand(HV, generator=g) * 2 - 1)
        self.dt_bias = torch.nn.Parameter(torch.randn(HV, generator=g) * 0.5)

    def forward(self, x, pool, slots, *, decode: bool):
        B, T, _ = x.shape
        H, HV, K, V = (self.cfg[n] for n in ("H", "HV", "K", "V"))
        q, k, v, a, b = self.in_proj(x).split([H * K, H * K, HV * V, HV, HV], dim=-1)
        q, k = q.reshape(B, T, H, K), k.reshape(B, T, H, K)
        v = v.reshape(B, T, HV, V)
        op = (
            fused_sigmoid_gating_delta_rule_update
            if decode
            else fused_sigmoid_gating_delta_rule_prefill
        )
        o = op(
            self.A_log,
            a.contiguous(),
            self.dt_bias,
            1.0,
            20.0,
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            b.contiguous(),
            pool,
            slots,
            use_qk_l2norm_in_kernel=True,
        )
        return self.out_proj(o.reshape(B, T, HV * V))


class AttentionLayer(torch.nn.Module):
    def __init__(self, cfg: dict, g: torch.Generator):
        super().__init__()
        self.cfg = cfg
        HQ, HKV, D, D_MODEL = cfg["HQ"], cfg["HKV"], cfg["D"], cfg["D_MODEL"]
        self.qkv = torch.nn.Linear(D_MODEL, (HQ + 2 * HKV) * D, bias=False)
        self.out_proj = torch.nn.Linear(HQ * D, D_MODEL, bias=False)
        with torch.no_grad():
            for p in (self.qkv.weight, self.out_proj.weight):
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)

    def forward(self, x, cache: dict | None):
        B, T, _ = x.shape
        HQ, HKV, D = (self.cfg[n] for n in ("HQ", "HKV", "D"))
        q, k, v = self.qkv(x).split([HQ * D, HKV * D, HKV * D], dim=-1)
        q, k, v = q.reshape(B, T, HQ, D), k.reshape(B, T, HKV, D), v.reshape(B, T, HKV, D)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 1), torch.cat([cache["v"], v], 1)
            cache["k"], cache["v"] = k, v
        # causal masking is aligned to the bottom right: the new queries see the whole cache
        o = flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
        return self.out_proj(o.reshape(B, T, HQ * D))


class HybridDecoder(torch.nn.Module):
    def __init__(self, cfg: dict, seed: int, n_pairs: int = 2):
        super().__init__()
        self.d_model = cfg["D_MODEL"]
        g = generator(seed)
        self.layers = torch.nn.ModuleList()
        for _ in range(n_pairs):
            self.layers.append(GatedDeltaLayer(cfg, g))
            self.layers.append(AttentionLayer(cfg, g))

    def forward(self, x, pools, slots, caches=None, *, decode=False):
        n_gdn = 0
        for i, layer in enumerate(self.layers):
            h = F.layer_norm(x, (self.d_model,))
            if isinstance(layer, GatedDeltaLayer):
                x = x + layer(h, pools[n_gdn], slots, decode=decode)
                n_gdn += 1
            else:
                x = x + layer(h, None if caches is None else caches[i])
        return x


def _empty_pools(model, cfg, num_slots, device):
    n = sum(isinstance(m, GatedDeltaLayer) for m in model.layers)
    shape = (num_slots, cfg["HV"], cfg["K"], cfg["V"])
    return [torch.zeros(shape, device=device) for _ in range(n)]


@pytest.mark.parametrize(
    ("cfg", "batch", "prompt", "new_tokens"),
    [
        (SMALL, 2, 70, 5),
        (SMALL, 1, 1, 3),
        pytest.param(REALISTIC, 3, 777, 6, marks=pytest.mark.gpu, id="realistic"),
    ],
)
def test_prefill_then_decode_equals_one_pass(device, on_gpu, cfg, batch, prompt, new_tokens):
    model = HybridDecoder(cfg, seed=prompt).to(device)
    total = prompt + new_tokens
    x = torch.randn(batch, total, cfg["D_MODEL"], generator=generator(7)).to(device)
    num_slots = batch + 3
    slots = randperm(num_slots, seed=prompt, dtype=torch.int32)[:batch].to(device)

    with torch.no_grad():
        # one pass over the whole sequence, starting from zero states in its own pool slots
        full_pools = _empty_pools(model, cfg, num_slots, device)
        full = model(x, full_pools, slots)

        pools = _empty_pools(model, cfg, num_slots, device)
        caches = [{} for _ in model.layers]
        steps = [model(x[:, :prompt], pools, slots, caches)]
        for t in range(prompt, total):
            steps.append(model(x[:, t : t + 1], pools, slots, caches, decode=True))
        incremental = torch.cat(steps, 1)

    # fp32 throughout; the two paths sum in different orders (chunks against steps)
    limit = 1e-3 if on_gpu else 1e-4
    assert_close(incremental, full, max_rel_err=limit, name="hybrid decoder output")
    for got, want in zip(pools, full_pools, strict=True):
        assert_close(got, want, max_rel_err=limit, name="final state pool")
