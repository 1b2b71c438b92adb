"""PyTorch eager MoE layer, for side-by-side throughput with bench-moe on the same GPU.

The layer is the usual eager implementation (Hugging Face OLMoE/Mixtral style): a linear router,
softmax in fp32, top-k, then a Python loop over experts that gathers each expert's tokens
(torch.where), runs its SwiGLU MLP and index_add_s the weighted output back; plus the load-balance
loss (E * sum f_e P_e) and the router z-loss. Parameters are fp32 with bf16 autocast (mixed precision,
as ultramem's f32 master weights with bf16 compute copies). The dense SwiGLU MLP of the same active
FLOPs is timed in the same run. Forward + backward at 16k tokens, d 768, the shapes of bench-moe.

  python3 bench/torch_moe.py [--tokens 16384] [--reps 10]
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class SwiGLU(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.w1 = nn.Linear(d, 2 * h, bias=False)  # [gate | up], as ultramem
        self.w2 = nn.Linear(h, d, bias=False)

    def forward(self, x):
        g, u = self.w1(x).chunk(2, -1)
        return self.w2(F.silu(g) * u)


class MoE(nn.Module):
    def __init__(self, d, experts, top_k, h, balance_weight=0.01, z_weight=0.001):
        super().__init__()
        self.E, self.k, self.bw, self.zw = experts, top_k, balance_weight, z_weight
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d, h) for _ in range(experts))

    def forward(self, x):
        logits = self.router(x).float()
        probs = logits.softmax(-1)
        weights, selected = probs.topk(self.k, dim=-1)
        out = torch.zeros_like(x)
        mask = F.one_hot(selected, self.E).permute(2, 1, 0)  # [E, k, N]
        for e in range(self.E):
            slot, tok = torch.where(mask[e])
            if tok.numel() == 0:
                continue
            y = self.experts[e](x[tok]) * weights[tok, slot, None].to(x.dtype)
            out.index_add_(0, tok, y.to(out.dtype))
        counts = mask.sum(dim=(1, 2)).float()
        balance = self.bw * self.E * (counts / (x.shape[0] * self.k) * probs.mean(0)).sum()
        z = self.zw * torch.logsumexp(logits, -1).pow(2).mean()
        return out, balance + z


def moe_ffn_params(d, experts, top_k, h):
    """Matmul weights a token passes through in the layer: its top-k SwiGLU experts and the router
    (6 flops per weight per token for forward + backward, as ultramem's MFU)."""
    return top_k * 3 * d * h + d * experts


def timed(step, reps, warmup=3):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    dev, d, N = "cuda", 768, a.tokens
    torch.manual_seed(0)
    x = torch.randn(N, d, device=dev)
    dy = torch.randn(N, d, device=dev, dtype=torch.bfloat16) * 1e-2
    cases = [("top-2 of 8, h 4992", 8, 2, 4992, 9984),
             ("top-2 of 8, h 1632 (moe-top2-of-8)", 8, 2, 1632, 3264),
             ("top-8 of 64, h 408 (olmoe-top8-of-64)", 64, 8, 408, 3264)]
    rows = []
    for name, E, k, h, hd in cases:
        dense = SwiGLU(d, hd).to(dev)

        def dense_step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = dense(x)
            y.backward(dy)

        ms = timed(dense_step, a.reps)
        dense_tf = 6 * N * 3 * d * hd / ms * 1e-9
        rows.append((name, f"dense MLP h {hd}", ms, dense_tf, 1.0))
        del dense
        moe = MoE(d, E, k, h).to(dev)
        nn.init.normal_(moe.router.weight, std=0.02)

        def moe_step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y, aux = moe(x)
            torch.autograd.backward([y, aux], [dy.to(y.dtype), torch.ones_like(aux)])

        ms = timed(moe_step, a.reps)
        tf = 6 * N * moe_ffn_params(d, E, k, h) / ms * 1e-9
        rows.append((name, "PyTorch eager MoE", ms, tf, tf / dense_tf))
        del moe
        torch.cuda.empty_cache()
    for r in rows:
        print(json.dumps({"case": r[0], "impl": r[1], "ms": round(r[2], 3), "tflops": round(r[3], 1),
                          "vs_dense": round(r[4], 3)}))
    print(f"\nPyTorch {torch.__version__}, {torch.cuda.get_device_name()}, {N} tokens, d {d}, SwiGLU, bf16 autocast\n")
    print("| case | implementation | ms | TFLOP/s | vs dense TFLOP/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.1f} | {100 * r[4]:.0f}% |")


if __name__ == "__main__":
    main()
