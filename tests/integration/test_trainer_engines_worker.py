"""torchrun worker for test_trainer_engines.py (no tests here: pytest collects nothing from it).

A toy two-scale GAN over two real DeepSpeed engines, checked step by step against plain PyTorch on the
same global batch: the D step, the G step with D frozen, an engine rebuild that adds a scale and carries
the Adam moments of the parameters that keep training, and a checkpoint save + load into fresh engines.
"""
from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

warnings.filterwarnings("ignore", category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer import checkpoint, distributed as dist, engines  # noqa: E402
from trainer.config import EngineConfig  # noqa: E402

B = 2  # per rank


class ToyG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scales = nn.ModuleList([nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.scales[1](torch.relu(self.scales[0](x))))


def toy_d() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3, padding=1))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step`` (same on every rank); each rank takes its slice."""
    gen = torch.Generator().manual_seed(1000 + step)
    size = (B * dist.world_size(), 3, 8, 8)
    return torch.randn(*size, generator=gen), torch.randn(*size, generator=gen)


def mine(t: torch.Tensor) -> torch.Tensor:
    return t[dist.rank() * B:(dist.rank() + 1) * B]


def d_loss(d, real, fake):
    return torch.relu(1 - d(real)).mean() + torch.relu(1 + d(fake)).mean()


def gan_step(engG, engD, x, real):
    """One D update, then one G update with D frozen (its ``.module``: stage 0 refuses the engine call)."""
    fake = engG(x)
    ld = d_loss(engD, real, fake.detach())
    engD.backward(ld)
    engD.step()
    engD.module.requires_grad_(False)
    lg = -engD.module(fake).mean()
    engG.backward(lg)
    engG.step()
    engD.module.requires_grad_(True)
    return ld.item(), lg.item()


def reference_step(g, d, opt_g, opt_d, x, real):
    fake = g(x)
    opt_d.zero_grad()
    d_loss(d, real, fake.detach()).backward()
    opt_d.step()
    d.requires_grad_(False)
    opt_g.zero_grad()
    (-d(fake).mean()).backward()
    opt_g.step()
    d.requires_grad_(True)


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def params_equal_across_ranks(module: nn.Module) -> bool:
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.world_size())]
    torch.distributed.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], t) for t in gathered)


def unfused(both: engines.Engines, fused: bool | None) -> None:
    for engine in (both.generator, both.discriminator):
        for group in engines.inner_optimizer(engine).param_groups:
            group["fused"] = fused


def run(stage: int, out: Path, carry: bool = True) -> dict:
    cfg = EngineConfig(zero_stage=stage, lr=1e-2)
    torch.manual_seed(0)
    g, d = ToyG(), toy_d()
    ref_g, ref_d = copy.deepcopy(g), copy.deepcopy(d)
    # Scale 1 frozen first, as while the coarse scale trains alone.
    g.scales[1].requires_grad_(False)
    engG, engD = engines.build(g, cfg, B), engines.build(d, cfg, B)
    ref_opt_g = torch.optim.Adam(ref_g.scales[0].parameters(), lr=1e-2, betas=(0.5, 0.999))
    ref_opt_d = torch.optim.Adam(ref_d.parameters(), lr=1e-2, betas=(0.5, 0.999))
    losses = []
    for step in range(3):
        x, real = batch(step)
        losses.append(gan_step(engG, engD, mine(x), mine(real)))
        reference_step(ref_g, ref_d, ref_opt_g, ref_opt_d, x, real)
    diff_before = max(max_diff(g, ref_g), max_diff(d, ref_d))

    # Add scale 1: rebuild G's engine, carrying scale 0's moments; scale 1 starts fresh.
    carried = engines.optimizer_state(engG, g.scales[0].parameters())
    engG.destroy()
    g.scales[1].requires_grad_(True)
    engG = engines.build(g, cfg, B, new_params=list(g.scales[1].parameters()))
    restored = engines.load_optimizer_state(engG, g.scales[0].parameters(), carried) if carry else 0
    ref_opt_g.add_param_group({"params": list(ref_g.scales[1].parameters())})
    for step in range(3, 5):
        x, real = batch(step)
        losses.append(gan_step(engG, engD, mine(x), mine(real)))
        reference_step(ref_g, ref_d, ref_opt_g, ref_opt_d, x, real)
    diff_after = max(max_diff(g, ref_g), max_diff(d, ref_d))
    if not carry:  # the control run: it shows the comparison can tell carried moments from fresh ones
        engG.destroy()
        engD.destroy()
        return {"diff_after": diff_after}
    same_across_ranks = params_equal_across_ranks(g) and params_equal_across_ranks(d)

    # Save, take one more step, then load into fresh engines over fresh modules and take it again.
    both = engines.Engines(engG, engD)
    # Saved as the per-tensor Adam of earlier releases saved its param groups: a resume must fuse again.
    unfused(both, None)
    folder = checkpoint.save(out / f"ckpt{stage}", 5, {"step": 5}, both.save, keep=2)
    unfused(both, True)
    x, real = batch(5)
    next_losses = gan_step(engG, engD, mine(x), mine(real))
    both.destroy()
    torch.manual_seed(123)  # different initial weights: everything must come from the checkpoint
    g2, d2 = ToyG(), toy_d()
    # Same param-group layout as the saved engine (the trainer records it in its state for this).
    fresh = engines.Engines(engines.build(g2, cfg, B, new_params=list(g2.scales[1].parameters())),
                            engines.build(d2, cfg, B))
    fresh.load(folder)
    resumed_losses = gan_step(fresh.generator, fresh.discriminator, mine(x), mine(real))
    diff_resumed = max(max_diff(g2, g), max_diff(d2, d))
    fused = [all(g["fused"] for g in engines.inner_optimizer(e).param_groups)
             for e in (fresh.generator, fresh.discriminator)]
    own_reduction = any("allreduce_gradients" in vars(e) for e in (fresh.generator, fresh.discriminator))
    fresh.destroy()
    # Our own files load without unpickling code. (DeepSpeed's ZeRO optimizer shards do not: they
    # pickle a LossScaler object; DeepSpeed loads those itself.)
    ours = [folder / "trainer.pt", *folder.glob("rng-rank*.pt"), *folder.glob("*/ds/mp_rank_*_model_states.pt")]
    weights_only_ok = all(isinstance(torch.load(p, weights_only=True), dict) for p in ours)
    return {"losses": losses, "diff_before": diff_before, "diff_after": diff_after, "restored": restored,
            "same_across_ranks": same_across_ranks, "next": next_losses, "resumed": resumed_losses,
            "diff_resumed": diff_resumed, "weights_only_ok": weights_only_ok,
            "fused": fused, "own_reduction": own_reduction}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init()
    results = {str(stage): run(stage, out) for stage in map(int, sys.argv[2].split(","))}
    results["control"] = run(2, out, carry=False)
    if dist.is_main():
        (out / "result.json").write_text(json.dumps(results))
    dist.exit_process(0)


if __name__ == "__main__":
    main()
