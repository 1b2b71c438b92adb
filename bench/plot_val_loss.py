"""Validation-loss curves of several runs (their metrics.jsonl) as one SVG, and a markdown table of
the final figures. Plain Python, no plotting library. Usage:
    python3 bench/plot_val_loss.py OUT.svg NAME=RUN_DIR [NAME=RUN_DIR ...]
"""
import json
import math
import sys


def read(run_dir):
    val, train, tps = [], [], []
    with open(f"{run_dir}/metrics.jsonl") as f:
        for line in f:
            j = json.loads(line)
            if "val_loss" in j:
                val.append((j["step"], j["val_loss"]))
            elif "loss" in j:
                train.append((j["step"], j["loss"], j.get("tokens", 0)))
                tps.append(j.get("tokens_per_s", 0))
    return val, train, tps


def svg(curves, path, w=720, h=440, pad=60):
    xs = [s for _, pts in curves for s, _ in pts]
    ys = [v for _, pts in curves for _, v in pts]
    x0, x1 = 0, max(xs)
    y0, y1 = math.floor(min(ys) * 10) / 10, math.ceil(max(ys[len(ys) // 8:] or ys) * 10) / 10
    sx = lambda x: pad + (x - x0) / (x1 - x0) * (w - 2 * pad)
    sy = lambda y: h - pad - (min(y, y1) - y0) / (y1 - y0) * (h - 2 * pad)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{pad}" y1="{h-pad}" x2="{w-pad}" y2="{h-pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h-pad}" stroke="black"/>',
           f'<text x="{w/2}" y="{h-15}" text-anchor="middle">step</text>',
           f'<text x="15" y="{h/2}" transform="rotate(-90 15 {h/2})" text-anchor="middle">validation loss (nats/token)</text>']
    for k in range(6):
        y = y0 + (y1 - y0) * k / 5
        out.append(f'<text x="{pad-8}" y="{sy(y)+4}" text-anchor="end">{y:.2f}</text>')
        out.append(f'<line x1="{pad}" y1="{sy(y)}" x2="{w-pad}" y2="{sy(y)}" stroke="#ddd"/>')
        x = x0 + (x1 - x0) * k / 5
        out.append(f'<text x="{sx(x)}" y="{h-pad+16}" text-anchor="middle">{int(x)}</text>')
    for i, (name, pts) in enumerate(curves):
        c = colors[i % len(colors)]
        d = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{w-pad-150}" y="{pad+18*i+10}" fill="{c}">{name}: {pts[-1][1]:.3f}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    path, runs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    curves = []
    print("| run | steps | tokens | final train loss | final val loss | median tokens/s |\n|---|---|---|---|---|---|")
    for name, d in runs:
        val, train, tps = read(d)
        curves.append((name, val))
        tps = sorted(tps[len(tps) // 10:]) or [0]
        print(f"| {name} | {train[-1][0]} | {train[-1][2]} | {train[-1][1]:.4f} | {val[-1][1]:.4f} | {tps[len(tps)//2]:.0f} |")
    svg(curves, path)


if __name__ == "__main__":
    main()
