"""Run by test_one_rank_engines.py in a process of its own (a one-rank DeepSpeed group): the trainer's
step on ZeRO 0 engines as ``trainer.engines.build`` makes them at one rank, and with DeepSpeed's own
gradient reduction put back; Adam's moments carried across a rebuild in bf16; bf16 ZeRO 2 with and
without the gradient overflow check, in one pass and as DeepSpeed makes it, and a NaN gradient that it
skips. Prints JSON."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_training import CHANNELS, TINY, clips  # noqa: E402
from models.build import build  # noqa: E402
from trainer import distributed as dist  # noqa: E402
from trainer import engines  # noqa: E402
from trainer.config import EngineConfig  # noqa: E402
from trainer.step import Discriminators, StepSettings, merged_passes, train_batch  # noqa: E402

filled: list[int] = []
_fill = engines._zero_missing_gradients


def counting_fill(params, *args, **kwargs) -> None:
    filled.append(sum(p.requires_grad and p.grad is None for p in params))
    _fill(params, *args, **kwargs)


def train(precision: str, deepspeeds_reduction: bool = False, deepspeeds_check: bool = False,
          **engine) -> tuple[list[torch.Tensor], bool]:
    torch.manual_seed(0)
    nets = build(TINY, CHANNELS)
    config = EngineConfig(**{"zero_stage": 0, "precision": precision, "lr": 1e-3, **engine})
    pair = engines.Engines(engines.build(nets.generator, config, 1),
                           engines.build(Discriminators(nets.image_discriminator, nets.temporal_discriminator),
                                         config, 1))
    replaced = all("allreduce_gradients" in vars(e) for e in (pair.generator, pair.discriminator))
    if deepspeeds_reduction:
        for engine in (pair.generator, pair.discriminator):
            del engine.allreduce_gradients
    if deepspeeds_check:  # DeepSpeed's per-tensor gradient overflow check, not the one-pass one
        for engine in (pair.generator, pair.discriminator):
            del engine.optimizer.has_overflow_partitioned_grads_serial
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    settings = StepSettings(loss=TINY.loss, frames_per_step=2, temporal_frames=TINY.discriminator.temporal_frames,
                            temporal_scales=TINY.discriminator.temporal_scales, dtype=dtype, **merged_passes(TINY))
    batch = clips(4, 16, 32)
    for _ in range(3):
        train_batch(pair, batch, settings)
    weights = [p.detach().float().clone() for module in (nets.generator, nets.image_discriminator,
                                                         nets.temporal_discriminator) for p in module.parameters()]
    pair.destroy()
    return weights, replaced


def bf16_carry() -> dict:
    """Two Adam steps of a bf16 ZeRO 0 engine, its moments carried into a rebuilt engine, read back."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    config = EngineConfig(zero_stage=0, precision="bf16", lr=1e-2)
    engine = engines.build(module, config, 1)
    for _ in range(2):
        engine.backward(engine(torch.randn(1, 4, dtype=torch.bfloat16)).float().sum())
        engine.step()
    saved = engines.optimizer_state(engine, module.parameters())
    engine.destroy()
    rebuilt = engines.build(module, config, 1)
    restored = engines.load_optimizer_state(rebuilt, module.parameters(), saved)
    back = engines.optimizer_state(rebuilt, module.parameters())
    same = bool(saved) and all(torch.equal(back[key][name], saved[key][name])
                               for key in saved for name in ("exp_avg", "exp_avg_sq", "step"))
    moved = any(state["exp_avg"].abs().sum() > 0 for state in saved.values())
    rebuilt.destroy()
    return {"params": len(list(module.parameters())), "carried": len(saved), "restored": restored,
            "same": same, "moments_nonzero": bool(moved)}


def overflow_skips(deepspeeds_check: bool, bad: float, stage: int) -> dict:
    """A bf16 ZeRO ``stage`` step whose gradients hold one ``bad`` value (one element of one tensor), then a
    finite one."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    engine = engines.build(module, EngineConfig(zero_stage=stage, precision="bf16", lr=1e-2), 1)
    one_pass = "has_overflow_partitioned_grads_serial" in vars(engine.optimizer)
    if deepspeeds_check:
        del engine.optimizer.has_overflow_partitioned_grads_serial
    weight = module[0].weight
    hook = weight.register_hook(lambda g: g.index_put((torch.tensor([1]), torch.tensor([2])),
                                                      torch.tensor(bad, dtype=g.dtype)))
    moved = []
    for _ in range(2):
        before = [p.detach().clone() for p in module.parameters()]
        engine.backward(engine(torch.randn(2, 4, dtype=torch.bfloat16)).float().sum())
        engine.step()
        moved.append(sum(not torch.equal(a, b) for a, b in zip(before, module.parameters())))
        hook.remove()
    finite = all(bool(torch.isfinite(p).all()) for p in module.parameters())
    engine.destroy()
    return {"one_pass": one_pass, "moved": moved, "finite": finite}


def channels_last_zero0_bf16() -> dict:
    """A bf16 ZeRO 0 engine whose module is made channels_last after the build (DeepSpeed's initial
    broadcast refuses such weights: benchmarks/gpu_step.py's trial does this): two steps move every
    weight, and the convolution weights stay channels_last."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 1, 3))
    engine = engines.build(module, EngineConfig(zero_stage=0, precision="bf16", lr=1e-2), 1)
    module.to(memory_format=torch.channels_last)
    moved = []
    for _ in range(2):
        before = [p.detach().clone() for p in module.parameters()]
        frames = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        engine.backward(engine(frames).float().sum())
        engine.step()
        moved.append(sum(not torch.equal(a, b) for a, b in zip(before, module.parameters())))
    kept = sum(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in module.parameters() if p.dim() == 4)
    engine.destroy()
    return {"moved": moved, "channels_last_weights": kept}


def main() -> None:
    torch.set_num_threads(1)
    dist.init()
    engines._zero_missing_gradients = counting_fill
    out = {}
    for precision in ("fp32", "bf16"):
        filled.clear()
        ours, replaced = train(precision, deepspeeds_reduction=False)
        fills = sum(filled)
        theirs, _ = train(precision, deepspeeds_reduction=True)
        out[precision] = {"replaced": replaced, "filled": fills,
                          "identical": all(torch.equal(a, b) for a, b in zip(ours, theirs))}
    out["bf16_carry"] = bf16_carry()
    # bf16 ZeRO 2 with the gradient overflow check (the default: the one-pass one) and without: it only reads.
    checked, _ = train("bf16", zero_stage=2)
    unchecked, _ = train("bf16", zero_stage=2, check_grad_overflow=False)
    out["overflow_check_only_reads"] = all(torch.equal(a, b) for a, b in zip(checked, unchecked))
    per_tensor, _ = train("bf16", zero_stage=2, deepspeeds_check=True)
    out["one_pass_check_same_as_deepspeeds"] = all(torch.equal(a, b) for a, b in zip(checked, per_tensor))
    out["bad_gradient"] = {f"{check} zero{stage} {bad}": overflow_skips(check == "deepspeeds", bad, stage)
                           for check in ("one_pass", "deepspeeds") for stage in (1, 2)
                           for bad in (float("nan"), float("-inf"), 1e30)}
    torch.manual_seed(0)
    start = build(TINY, CHANNELS)
    # As the engine holds them before its first step: DeepSpeed casts the weights to bf16.
    initial = [p.detach().bfloat16().float() for module in (start.generator, start.image_discriminator,
                                                            start.temporal_discriminator) for p in module.parameters()]
    out["bf16_zero2_trained"] = sum(not torch.equal(a, b) for a, b in zip(initial, checked))
    out["channels_last_zero0_bf16"] = channels_last_zero0_bf16()
    print(json.dumps(out), flush=True)
    dist.exit_process(0)


if __name__ == "__main__":
    main()
