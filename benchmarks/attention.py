"""Sampled cross-attention against dense attention, as the sampled fraction falls.

    python benchmarks/attention.py --json docs/results/attention_cpu.json

For one decoder cross-attention (hidden C, heads H, Q queries) over N image tokens, times the
scores + weighted sum of: dense attention (``full``), dense attention with a boolean mask (what the
reference code does with its samples), and our gather-based sampled attention at 5-100%. K/V
projections are excluded (they are the same for all forms; the speed issue covers them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table, write_json  # noqa: E402

from boltzformer.model.attention import sampled_attention  # noqa: E402
from boltzformer.model.sampling import AttentionSelection, sample_token_indices  # noqa: E402


def _time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5, 1.0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    H, d, Q = args.heads, args.hidden // args.heads, args.queries
    rows = []
    for N in args.tokens:
        q, k, v = torch.randn(1, H, Q, d), torch.randn(1, H, N, d), torch.randn(1, H, N, d)
        dense = _time(lambda: F.scaled_dot_product_attention(q, k, v), args.repeat)
        rows.append({"tokens": N, "form": "dense (full)", "ratio": 1.0, "ms": 1e3 * dense, "vs dense": 1.0})
        for ratio in args.ratios:
            idx, valid = sample_token_indices(torch.randn(1, H, Q, N), 1.0, ratio, generator=torch.Generator().manual_seed(0))
            keep = AttentionSelection(indices=idx, valid=valid).as_keep_mask(N)

            sampled = lambda: sampled_attention(q, k, v, indices=idx, valid=valid)  # noqa: E731

            t_masked = _time(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=keep), args.repeat)
            t_sampled = _time(sampled, args.repeat)
            rows.append({"tokens": N, "form": "dense + mask (reference)", "ratio": ratio, "ms": 1e3 * t_masked, "vs dense": t_masked / dense})
            rows.append({"tokens": N, "form": "sampled (ours)", "ratio": ratio, "ms": 1e3 * t_sampled, "vs dense": t_sampled / dense})
    print(table(rows, ["tokens", "form", "ratio", "ms", "vs dense"]))
    if args.json:
        write_json({"machine": machine(), "queries": Q, "hidden": args.hidden, "heads": H, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
