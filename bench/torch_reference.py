"""PyTorch reference of ultramem's transformer, for side-by-side throughput on the same GPU.

Builds the model a config's "model" section describes (the same architecture choices ultramem
implements: LayerNorm/RMSNorm, learned/RoPE positions, GELU(tanh)/SwiGLU MLP or "ffn": "moe" with the
eager MoE layer of bench/torch_moe.py (router, top-k, a loop over experts, balance and z-losses added to
the loss), tied head, biases), trains it on random tokens with bf16 autocast, fused AdamW and
torch.compile (--no-compile: eager, which the MoE loop's data-dependent shapes want), and prints one
JSON line with tokens/s, MFU (active FLOPs) and peak memory. --set model_key=value overrides the config
as ultramem's --set model.key=value does. Usage:
  python3 bench/torch_reference.py configs/gpt2-124m.json --batch 32 --seq 1024 --steps 30
  python3 bench/torch_reference.py configs/moe-top2-of-8.json --batch 8 --seq 2048 --no-compile --set moe_hidden=4992
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_moe import MoE, moe_ffn_params


class Norm(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.kind, self.eps = m.get("norm", "layernorm"), m.get("norm_eps", 1e-5)
        d = m["d_model"]
        affine = m.get("norm_affine", True)
        self.weight = nn.Parameter(torch.ones(d)) if affine else None
        self.bias = nn.Parameter(torch.zeros(d)) if affine and self.kind == "layernorm" and m.get("bias", True) else None

    def forward(self, x):
        if self.kind == "rmsnorm":
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


def rope(x, theta):
    # x: [B, H, T, D]; GPT-NeoX rotate_half convention, as ultramem.
    T, D = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype), torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Block(nn.Module):
    def __init__(self, m):
        super().__init__()
        d, self.h = m["d_model"], m["n_heads"]
        self.hkv = m.get("n_kv_heads", 0) or self.h
        self.hd = d // self.h
        bias = m.get("bias", True)
        self.m = m
        self.attn_norm, self.ff_norm = Norm(m), Norm(m)
        self.att_proj = nn.Linear(d, (self.h + 2 * self.hkv) * self.hd, bias=bias)
        self.attn_out = nn.Linear(d, d, bias=bias)
        hidden = m["mlp_hidden"]
        self.swiglu = m.get("mlp_act", "gelu") == "swiglu"
        self.moe = None
        if m.get("ffn", "mlp") == "moe":
            assert self.swiglu, "the PyTorch MoE reference has SwiGLU experts"
            assert not m.get("moe_renormalize", False) and not m.get("moe_capacity_factor", 0) and \
                not m.get("moe_shared_expert_hidden", 0), \
                "the PyTorch MoE reference: dropless, no renormalisation, no shared expert"
            self.moe = MoE(d, m["moe_num_experts"], m["moe_top_k"], m.get("moe_hidden", 0) or hidden,
                           m.get("moe_loss_weight", 0.01), m.get("moe_zloss_weight", 0.001))
        else:
            self.ff_proj = nn.Linear(d, 2 * hidden if self.swiglu else hidden, bias=bias)
            self.ff_out = nn.Linear(hidden, d, bias=bias)

    def forward(self, x):
        """Returns the block's output and its auxiliary loss (0 without MoE)."""
        B, T, _ = x.shape
        qkv = self.att_proj(self.attn_norm(x))
        q, k, v = qkv.split([self.h * self.hd, self.hkv * self.hd, self.hkv * self.hd], -1)
        q = q.view(B, T, self.h, self.hd).transpose(1, 2)
        k = k.view(B, T, self.hkv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.hkv, self.hd).transpose(1, 2)
        if self.m.get("pos_encoding", "learned") == "rope":
            q, k = rope(q, self.m.get("rope_theta", 1e4)), rope(k, self.m.get("rope_theta", 1e4))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.hkv != self.h)
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, T, -1))
        if self.moe is not None:
            out, aux = self.moe(self.ff_norm(x).reshape(B * T, -1))
            return x + out.view(B, T, -1), aux
        h = self.ff_proj(self.ff_norm(x))
        if self.swiglu:
            g, u = h.chunk(2, -1)
            h = F.silu(g) * u
        else:
            h = F.gelu(h, approximate="tanh")
        return x + self.ff_out(h), x.new_zeros((), dtype=torch.float32)


class Model(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        self.wte = nn.Embedding(m["vocab_size"], m["d_model"])
        self.wpe = nn.Embedding(m["max_seq_len"], m["d_model"]) if m.get("pos_encoding", "learned") == "learned" else None
        self.blocks = nn.ModuleList([Block(m) for _ in range(m["n_layers"])])
        self.ln_f = Norm(m)
        self.head = None if m.get("tie_embeddings", True) else nn.Linear(m["d_model"], m["vocab_size"], bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=m.get("init_std", 0.02))

    def forward(self, ids, targets):
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        aux = 0.0
        for b in self.blocks:
            x, a = b(x)
            aux = aux + a
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight if self.head is None else self.head.weight)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1)) + aux


# The model keys this reference reads (the rest of a config's model section, e.g. init, is ultramem's own).
MODELLED_KEYS = {"vocab_size", "valid_vocab", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "norm",
                 "norm_eps", "norm_affine", "pos_encoding", "rope_theta", "mlp_act", "mlp_hidden", "bias",
                 "tie_embeddings", "init_std", "ffn", "moe_num_experts", "moe_top_k", "moe_hidden", "moe_loss_weight",
                 "moe_zloss_weight"}


def flops_per_token(m, T):
    d, L = m["d_model"], m["n_layers"]
    h = m["n_heads"]
    hkv = m.get("n_kv_heads", 0) or h
    qkv = (h + 2 * hkv) * (d // h)
    if m.get("ffn", "mlp") == "moe":  # the active experts' SwiGLU MLPs and the router
        ffn = moe_ffn_params(d, m["moe_num_experts"], m["moe_top_k"], m.get("moe_hidden", 0) or m["mlp_hidden"])
    else:
        mlp_in = 2 * m["mlp_hidden"] if m.get("mlp_act", "gelu") == "swiglu" else m["mlp_hidden"]
        ffn = d * mlp_in + m["mlp_hidden"] * d
    per_layer = d * qkv + d * d + ffn
    return 6 * (L * per_layer + m["vocab_size"] * d) + 12 * L * d * T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model key")
    args = ap.parse_args()
    m = json.load(open(args.config))["model"]
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in MODELLED_KEYS:
            raise SystemExit(f"--set {kv}: the PyTorch reference models no key {key!r} "
                             f"(it models {sorted(MODELLED_KEYS)})")
        try:
            m[key] = json.loads(value)
        except json.JSONDecodeError:
            m[key] = value
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = Model(m).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_fn = model if args.no_compile else torch.compile(model)
    V = m.get("valid_vocab", 0) or m["vocab_size"]
    ids = torch.randint(0, V, (args.batch, args.seq + 1), device="cuda")
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    times = []
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    tok_s = args.batch * args.seq / med
    print(json.dumps({"impl": "pytorch" + ("" if args.no_compile else "+compile"), "tokens_per_s": tok_s,
                      "step_ms": med * 1e3, "mfu": tok_s * flops_per_token(m, args.seq) / 989e12,
                      "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                      "params_m": sum(p.numel() for p in model.parameters()) / 1e6}))


if __name__ == "__main__":
    main()
