"""Adam's step over the generator's parameters: torch's fused kernel (what ``trainer/engines.py`` builds)
against the per-tensor loop (``torch.optim.Adam``'s default on the CPU), in one invocation, for the demo
model and the quality benchmark's, with the largest difference between the weights each gives.

    .venv/bin/python benchmarks/adam_step.py [--threads 2] [--repeats 50]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.config import load  # noqa: E402
from models.build import build  # noqa: E402


def timed_steps(params: list[torch.Tensor], grads: list[torch.Tensor], repeats: int,
                **how: bool) -> tuple[float, list[torch.Tensor]]:
    """Seconds per Adam step (after a first, untimed one that makes the state), and the weights after."""
    weights = [p.detach().clone().requires_grad_() for p in params]
    for weight, grad in zip(weights, grads):
        weight.grad = grad.clone()
    optimizer = torch.optim.Adam(weights, lr=4e-4, betas=(0.5, 0.999), **how)
    optimizer.step()
    started = time.perf_counter()
    for _ in range(repeats):
        optimizer.step()
    return (time.perf_counter() - started) / repeats, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in ("demo", "quality"):
        generator = build(load(REPO / "configs" / f"{name}.yaml").model, 9).generator
        params = [p for p in generator.parameters() if p.requires_grad]
        grads = [torch.randn_like(p) for p in params]
        loop, loop_weights = timed_steps(params, grads, args.repeats, foreach=False)
        fused, fused_weights = timed_steps(params, grads, args.repeats, fused=True)
        differs = max((a - b).abs().max().item() for a, b in zip(loop_weights, fused_weights))
        print(f"{name} generator ({len(params)} tensors, {sum(p.numel() for p in params) / 1e6:.2f}M values): "
              f"fused Adam {fused * 1e3:.2f} ms per step against the per-tensor loop's {loop * 1e3:.2f} ms: "
              f"{loop / fused:.2f}x faster; weights differ by at most {differs:.1e} after {args.repeats + 1} steps",
              flush=True)


if __name__ == "__main__":
    main()
