"""PyTorch reference of one UltraMemV2 memory layer (the original release's math, written with plain
torch ops: no fused custom kernels), timed forward and forward+backward at the same shapes as
bench-memory-layer, eager and torch.compile'd. Usage:
    python3 bench/torch_memory_layer.py [CONFIG.json] [--tokens N]
Prints one JSON line per mode and a markdown table last.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F


def load(path):
    with open(path) as f:
        return json.load(f)


class UltraMemV2Layer(torch.nn.Module):
    """Tucker-decomposed retrieval (rank r, h cores), shared pool with sharing window and offset,
    pre-value gate, multi-core chunk weights, value projection; as in shared/specs/ultramem.md."""

    def __init__(self, m, d, n_layers):
        super().__init__()
        self.K, self.V, self.P = m["mem_kdim"], m["mem_vdim"], m.get("mem_pre_vdim", 0)
        self.knn, self.H = m["mem_knn"], m.get("mem_head", 1)
        self.r, self.h = m.get("mem_tucker_rank", 2), m.get("mem_tucker_multihead", 2)
        self.qr = self.r if m.get("mem_q_for_each_tucker_rank", False) else 1
        knum, share = m["mem_knum"], m.get("mem_share_ratio", 1.0)
        self.pool = knum * knum * n_layers
        kn = int(math.floor(math.sqrt(self.pool * share) + 1e-9))
        self.value_num = kn * kn
        self.n = m.get("mem_key_expand_time", 1) * kn
        self.offset = 0
        K, H, r = self.K, self.H, self.r
        self.query_proj = torch.nn.Linear(d, H * 2 * self.qr * K, bias=False)
        self.keys = torch.nn.Parameter(torch.randn(H, 2, r, self.n, K) / math.sqrt(K))
        self.qnorm = torch.nn.LayerNorm(K, bias=False)
        self.knorm = torch.nn.LayerNorm(K, bias=False)
        self.cores = torch.nn.Parameter(torch.rand(self.h, H, r, r))
        self.values = torch.nn.Parameter(torch.randn(self.pool, self.V) * 0.02)
        self.pre_values = torch.nn.Parameter(torch.randn(self.pool, self.P) * 0.02) if self.P else None
        self.pre_proj = torch.nn.Linear(d, self.P, bias=False) if self.P else None
        self.values_proj = torch.nn.Linear(self.V, d, bias=False)
        self.register_buffer("shuffle", torch.randperm(self.n * self.n))
        u, s, v = torch.linalg.svd(self.cores.detach().sum(0).float())
        self.register_buffer("u", u[..., :, 0].contiguous())   # [H, r]
        self.register_buffer("v", v[..., 0, :].contiguous())   # [H, r]

    def forward(self, x):
        T, H, K, r, n, knn = x.shape[0], self.H, self.K, self.r, self.n, self.knn
        q = self.qnorm(self.query_proj(x).view(T, H, 2, self.qr, K))
        keys = self.knorm(self.keys)                                       # [H, 2, r, n, K]
        qe = q if self.qr == r else q.expand(T, H, 2, r, K)
        scores = torch.einsum("thspk,hspnk->thspn", qe, keys).float()     # [T, H, 2, r, n]
        a = (scores[:, :, 0] * self.u[None, :, :, None]).sum(2)            # [T, H, n]
        b = (scores[:, :, 1] * self.v[None, :, :, None]).sum(2)
        _, i1 = a.topk(knn, dim=-1)
        _, i2 = b.topk(knn, dim=-1)
        s1 = scores[:, :, 0].gather(3, i1[:, :, None, :].expand(T, H, r, knn))  # [T, H, r, knn]
        s2 = scores[:, :, 1].gather(3, i2[:, :, None, :].expand(T, H, r, knn))
        per_core = torch.einsum("thpa,mhpq,thqb->mthab", s1, self.cores.float(), s2).reshape(self.h, T, H, knn * knn)
        _, best = per_core.sum(0).topk(knn, dim=-1)                         # [T, H, knn]
        picked = per_core.gather(3, best[None].expand(self.h, T, H, knn))   # [h, T, H, knn]
        grid = (i1[:, :, :, None] * n + i2[:, :, None, :]).reshape(T, H, knn * knn)
        idx = self.shuffle[grid.gather(2, best)].reshape(T, H * knn)
        rows = (idx % self.value_num + self.offset) % self.pool
        w = picked.permute(1, 2, 3, 0).reshape(T, H * knn, self.h)         # [T, M, h]
        if self.pre_values is not None:
            gate = torch.einsum("tp,tmp->tm", self.pre_proj(x).float(), F.embedding(rows, self.pre_values).float())
            w = w * gate[..., None]
        vals = F.embedding(rows, self.values).view(T, H * knn, self.h, self.V // self.h)
        bag = (vals.float() * w[..., None]).sum(1).reshape(T, self.V).to(x.dtype)
        return self.values_proj(bag)


def bench(fn, reps=15, warmup=3):
    times = []
    for i in range(warmup + reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(e0.elapsed_time(e1))
    return sorted(times)[len(times) // 2]


def main():
    args = sys.argv[1:]
    config, tokens = "configs/ultramemv2-227m-1.2b.json", 16384
    while args:
        a = args.pop(0)
        if a == "--tokens":
            tokens = int(args.pop(0))
        else:
            config = a
    if not torch.cuda.is_available():
        print("torch_memory_layer: no CUDA device")
        return
    cfg = load(config)["model"]
    torch.manual_seed(0)
    layer = UltraMemV2Layer(cfg, cfg["d_model"], cfg["n_layers"]).cuda().to(torch.bfloat16)
    x = torch.randn(tokens, cfg["d_model"], device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(tokens, cfg["d_model"], device="cuda", dtype=torch.bfloat16)
    rows = []
    for mode in ("eager", "compiled"):
        f = layer if mode == "eager" else torch.compile(layer)
        try:
            with torch.no_grad():
                fwd = bench(lambda: f(x))

            def step():
                layer.zero_grad(set_to_none=True)
                x.grad = None
                f(x).backward(dy)

            both = bench(step)
        except Exception as e:  # torch.compile may be unavailable: report, keep the eager figure
            print(json.dumps({"bench": "torch_memory_layer", "mode": mode, "error": str(e)[:200]}))
            continue
        print(json.dumps({"bench": "torch_memory_layer", "mode": mode, "tokens": tokens, "fwd_ms": fwd, "fwd_bwd_ms": both}))
        rows.append((mode, fwd, both))
    print("\n| PyTorch layer | tokens | forward ms | forward+backward ms |\n|---|---|---|---|")
    for mode, fwd, both in rows:
        print(f"| {mode} | {tokens} | {fwd:.3f} | {both:.3f} |")


if __name__ == "__main__":
    main()
