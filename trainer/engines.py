"""DeepSpeed engines: the only module that calls ``deepspeed.initialize``, ``save_checkpoint`` and
``load_checkpoint``.

The GAN has two engines (generator; discriminators), as in DeepSpeed's DCGAN tutorial: each owns its
optimizer, ZeRO partitioning and checkpoint folder. Facts this module is built around (measured, see
docs/platform.md): a client ``torch.optim.Adam`` avoids the 2-minute JIT build of FusedAdam / cpu_adam;
``gradient_clipping`` silently defaults to 1.0 unless set; each engine needs its own checkpoint folder
(each writes a ``latest`` file); fp16 is refused on CPU. Adam is torch's fused one (one kernel, not the
per-tensor loop torch picks on the CPU). Under ZeRO 0 in bf16 DeepSpeed wraps it in
``FP16_UnfusedOptimizer``, which hands Adam fp32 copies of the weights (``_master``). At one rank under
ZeRO 0 the engine's gradient all-reduce is replaced by what it does besides reducing
(``_zero_missing_gradients``). In bf16 under ZeRO 1/2 DeepSpeed's per-tensor gradient overflow check is
replaced by one pass over all gradients (``_any_non_finite``).

Engines are rebuilt when the set of trainable parameters changes (a new generator scale). The module
objects survive the rebuild, so weights carry over as they are; the Adam moments of parameters that
keep training are copied from the old engine to the new one (``optimizer_state``/``load_optimizer_state``).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from dataio.errors import UserInputError
from trainer.config import EngineConfig, TrainConfig
from trainer.schedule import Stage

log = logging.getLogger(__name__)

TAG = "ds"
"""DeepSpeed's tag inside each engine folder; the checkpoint step lives in our folder name instead."""
ADAM_KEYS = ("exp_avg", "exp_avg_sq")
DEEPSPEED_PICKLED = frozenset({"deepspeed.runtime.zero.config.ZeroStageEnum",
                               "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                               "deepspeed.utils.tensor_fragment.fragment_address"})
"""The classes DeepSpeed's ZeRO optimizer files pickle (every other file of a checkpoint holds only
what ``torch.load(weights_only=True)`` accepts)."""


class UnsafeCheckpointError(UserInputError, ValueError):
    """An engine file that would unpickle more than ``DEEPSPEED_PICKLED``; the message names it."""


def check_pickled_classes(folder: str | Path) -> None:
    """Refuse engine files under ``folder`` that would unpickle anything but ``DEEPSPEED_PICKLED``.

    DeepSpeed loads its own files with ``weights_only=False`` (hard-coded in its checkpoint engine and
    in zero_to_fp32), so ``safe_globals`` cannot reach them; a checkpoint edited to hold other classes
    could run code when resumed or exported. This reads each file's pickle opcodes (torch's
    ``get_unsafe_globals_in_checkpoint``: nothing is unpickled) before DeepSpeed opens them.
    """
    from torch.serialization import get_unsafe_globals_in_checkpoint

    for path in sorted(Path(folder).rglob("*.pt")):
        unexpected = sorted(set(get_unsafe_globals_in_checkpoint(path)) - DEEPSPEED_PICKLED)
        if unexpected:
            raise UnsafeCheckpointError(f"{path}: would unpickle {', '.join(unexpected)}, which no checkpoint of "
                                        "ours holds; refused (was it edited or made by other code?)")


def precision(cfg: EngineConfig) -> str:
    """``fp32`` or ``bf16``: what ``auto`` means on this host."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if torch.cuda.is_available() else "fp32"


def ds_config(cfg: EngineConfig, micro_batch: int, world: int) -> dict[str, Any]:
    """The DeepSpeed config dict of one engine."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch * world,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": precision(cfg) == "bf16", "check_grad_overflow": cfg.check_grad_overflow},
        "steps_per_print": 10**9,  # we log ourselves; DeepSpeed's prints would interleave across ranks
        "wall_clock_breakdown": False,
    }
    if cfg.zero_stage in (1, 2):
        config["zero_optimization"].update({
            # Small buckets: the models are small and host memory is the budget.
            "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7,
            # Reduce each gradient partition to the rank that owns it (one reduce per owner) instead
            # of all-reducing the whole bucket and keeping half: half the bytes reach each rank.
            # benchmarks/zero.py: ZeRO-2 step time over stage 0 for the 73.5M model on 2 CPU ranks
            # went from 1.33x to 1.23x with this and the next setting (docs/performance.md).
            "use_multi_rank_bucket_allreduce": False,
        })
        if cfg.zero_stage == 2 and not torch.cuda.is_available():
            # On the CPU, copying each gradient into a contiguous buffer as it is produced (DeepSpeed's
            # default, against fragmentation of GPU memory) is pure cost: benchmarks/zero.py, 73.5M
            # model, 2 CPU ranks: 1.22-1.25x -> 1.09-1.19x (median 1.13x) of stage 0's step time.
            config["zero_optimization"]["contiguous_gradients"] = False
        if not cfg.grad_clip:
            # Without clipping nothing reads the global gradient norm; computing it costs a pass over
            # the partition and a blocking all-reduce per step. (DeepSpeed refuses this with clipping.)
            config["zero_optimization"]["compute_grad_norm"] = False
    return config


def build(module: nn.Module, cfg: EngineConfig, micro_batch: int, *, new_params: Iterable[nn.Parameter] = ()):
    """A DeepSpeed engine over ``module``'s parameters that have ``requires_grad``.

    ``new_params`` (a subset of those) go into their own Adam param group: ZeRO flattens each group
    and Adam keeps one step count per flat group, so parameters carried over with their moments
    (step n) and fresh ones (step 0) must not share one.
    """
    import deepspeed

    from trainer import distributed as dist

    trainable = [p for p in module.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(module).__name__} has no trainable parameters to build an engine over")
    fresh = {id(p) for p in new_params}
    groups = [{"params": [p for p in trainable if id(p) not in fresh]},
              {"params": [p for p in trainable if id(p) in fresh]}]
    groups = [g for g in groups if g["params"]]
    # fused: torch's one-kernel Adam (CPU and CUDA), the same update to float rounding; on the CPU, where
    # the default is a loop over tensors, 4.7-6.8x faster a step (benchmarks/adam_step.py).
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                 fused=True)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer,
                                      config=ds_config(cfg, micro_batch, dist.world_size()))
    if cfg.zero_stage == 0 and engine.dp_world_size == 1:
        # One rank's all-reduce is the identity, but DeepSpeed's ZeRO 0 still flattens every gradient into
        # a bucket, reduces it and copies it back after each backward (6.5% of the demo step at a tiny
        # size: docs/performance.md). ZeRO 1/2 keep theirs: it is what moves the gradients into their
        # flat partitions.
        engine.allreduce_gradients = functools.partial(_zero_missing_gradients, list(module.parameters()))
    zero = engine.optimizer
    if getattr(zero, "check_grad_overflow", False) and hasattr(zero, "has_overflow_partitioned_grads_serial") \
            and not zero.cpu_offload:
        # bf16 under ZeRO 1/2: DeepSpeed checks each gradient tensor for inf/NaN apart (about 13
        # operators, so kernel launches, per tensor: 8574 in a demo step); the same check in one pass.
        zero.has_overflow_partitioned_grads_serial = functools.partial(_any_non_finite, zero)
    return engine


def _any_non_finite(zero) -> torch.Tensor:
    """Whether any gradient a ZeRO 1/2 optimizer is about to step holds an inf or a NaN, as DeepSpeed's
    ``has_overflow_partitioned_grads_serial`` answers it (a bool tensor [1] on the device), from one
    ``torch._foreach_norm`` per dtype (the multi-tensor kernel ``clip_grad_norm_`` uses; CUDA's takes
    bf16, the AMP kernel ``GradScaler`` checks with does not). The max norm: the largest magnitude of a
    tensor, which propagates a NaN, is inf for an inf and cannot overflow (an L2 norm's squares would,
    for finite gradients). Only reads the gradients."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for i in range(len(zero.bit16_groups)):
        for grad in zero.averaged_gradients[i]:
            if grad is not None:
                by_dtype.setdefault(grad.dtype, []).append(grad)
    found = torch.zeros(1, dtype=torch.bool, device=zero.device)
    for same_dtype in by_dtype.values():  # foreach kernels take one dtype at a time
        found |= torch.isfinite(torch.stack(torch._foreach_norm(same_dtype, float("inf")))).all().logical_not()
    return found


def _zero_missing_gradients(params: list[nn.Parameter], bucket_size: int = 0) -> None:
    """What DeepSpeed's reduction does besides reducing: zeros for a trainable parameter without a
    gradient (the temporal discriminator in a chunk with no window yet), so that Adam steps it from its
    moments as it does on N ranks and under ZeRO 1/2. ``bucket_size``: the reduction's, unused."""
    for param in params:
        if param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def optimizer_state(engine, params: Iterable[nn.Parameter]) -> dict[int, dict[str, torch.Tensor]]:
    """Full (unpartitioned) Adam moments and step count of ``params``, keyed by ``id(param)``.

    Collective under ZeRO 1-2 (each rank holds a slice): call on every rank.
    """
    from deepspeed.utils import safe_get_full_optimizer_state

    out: dict[int, dict[str, torch.Tensor]] = {}
    for param in params:
        if hasattr(engine.optimizer, "bit16_groups"):  # ZeRO 1/2: each rank holds a slice
            step = _group_step(engine, param)
            if step is None:  # the engine never stepped: nothing to carry
                continue
            _link_fragments(engine, _group_index(engine, param))
            state = {k: safe_get_full_optimizer_state(param, k) for k in ADAM_KEYS}
            state["step"] = step
        else:
            raw = inner_optimizer(engine).state.get(_master(engine, param))
            if not raw:
                continue
            state = {k: raw[k].detach().clone() for k in ADAM_KEYS}
            state["step"] = torch.as_tensor(raw["step"], dtype=torch.float32).clone()
        if state["exp_avg"] is not None and state["step"] is not None:
            out[id(param)] = state
    return out


def load_optimizer_state(engine, params: Iterable[nn.Parameter], saved: dict[int, dict[str, torch.Tensor]]) -> int:
    """Put moments from ``optimizer_state`` back for the ``params`` that have them; returns how many.

    Call right after ``build`` (before the first step) with ``params`` placed outside ``new_params``.
    """
    from deepspeed.utils import safe_set_full_optimizer_state
    from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

    inner = inner_optimizer(engine)
    params = [p for p in params if id(p) in saved]
    zero_groups: set[int] = set()
    for param in params:
        if hasattr(engine.optimizer, "bit16_groups"):
            zero_groups.add(_group_index(engine, param))
    zero = engine.optimizer
    for index in sorted(zero_groups):
        # Adam creates its state lazily at the first step and ZeRO links each parameter's slice of it
        # after that step; create and link it now so the moments can be written in.
        flat = zero.single_partition_of_fp32_groups[index]
        step = next(saved[id(p)]["step"] for p in params if _group_index(engine, p) == index)
        inner.state[flat] = {"step": _step_count(step, flat), **{k: torch.zeros_like(flat) for k in ADAM_KEYS}}
        lazy_init_hp_params_optimizer_state(zero.bit16_groups[index], flat, inner.state)
    for param in params:
        state = saved[id(param)]
        if zero_groups:
            for key in ADAM_KEYS:
                safe_set_full_optimizer_state(param, state[key], key)
        else:
            master = _master(engine, param)
            inner.state[master] = {"step": _step_count(state["step"], master),
                                   **{k: state[k].to(master.device, copy=True) for k in ADAM_KEYS}}
    return len(params)


def _keep_fused(engine) -> None:
    """Loading an optimizer state takes its param groups as saved: a checkpoint of the per-tensor Adam
    (before it was fused) turns the fused kernel off. Turn it back on, each step count where the kernel
    reads it (float32, on the weights' device); the maths is the same either way."""
    inner = inner_optimizer(engine)
    for group in inner.param_groups:
        group["fused"] = True
        for param in group["params"]:
            state = inner.state.get(param)
            if state and "step" in state:
                state["step"] = _step_count(state["step"], param)


def _step_count(step: Any, weights: torch.Tensor) -> torch.Tensor:
    """Adam's step count as the fused kernel reads it: a float32 tensor of its own on the weights' device."""
    return torch.as_tensor(step, dtype=torch.float32).to(weights.device, copy=True)


def _master(engine, param: nn.Parameter) -> nn.Parameter:
    """The tensor Adam updates for ``param`` under ZeRO 0: the parameter itself, or in bf16 its fp32 copy
    (DeepSpeed's ``FP16_UnfusedOptimizer`` keeps ``fp32_groups`` beside the model's ``fp16_groups``)."""
    for low, high in zip(getattr(engine.optimizer, "fp16_groups", []), getattr(engine.optimizer, "fp32_groups", [])):
        for candidate, master in zip(low, high):
            if candidate is param:
                return master
    return param


def _link_fragments(engine, index: int) -> None:
    """Point the parameters of ZeRO group ``index`` at their slices of the Adam state. ZeRO links them
    lazily at its first step; an engine just loaded from a checkpoint has the state but not the links
    yet (reading a moment then failed inside DeepSpeed: 'NoneType' is not iterable)."""
    from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

    flat = engine.optimizer.single_partition_of_fp32_groups[index]
    lazy_init_hp_params_optimizer_state(engine.optimizer.bit16_groups[index], flat, inner_optimizer(engine).state)


def _group_index(engine, param: nn.Parameter) -> int:
    """Index of the optimizer param group that holds ``param``."""
    for index, group in enumerate(engine.optimizer.param_groups):
        if any(p is param for p in group["params"]):
            return index
    for index, group in enumerate(getattr(engine.optimizer, "bit16_groups", [])):
        if any(p is param for p in group):
            return index
    raise KeyError("parameter is not in this engine's optimizer")


def inner_optimizer(engine) -> torch.optim.Optimizer:
    """The client Adam inside DeepSpeed's wrappers."""
    opt = engine.optimizer
    while hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return opt


def _group_step(engine, param: nn.Parameter) -> torch.Tensor | None:
    """Adam's step count of the flat ZeRO partition holding ``param``."""
    flat = engine.optimizer.single_partition_of_fp32_groups[_group_index(engine, param)]
    state = inner_optimizer(engine).state.get(flat)
    if not state or "step" not in state:
        return None
    return torch.as_tensor(state["step"], dtype=torch.float32).clone()


@dataclass
class Engines:
    """The two engines of the GAN."""
    generator: Any
    discriminator: Any
    new_params: list[int] = field(default_factory=list)
    """Indices (in ``generator.parameters()`` order) of the generator engine's fresh Adam param group:
    a checkpoint records them, so that a resumed run builds the engine with the same layout and its
    optimizer state loads."""

    def save(self, folder: Path) -> None:
        """Write both engines under ``folder`` (every rank; ZeRO ranks write their own shards). Each
        engine folder carries DeepSpeed's own ``latest`` tag file, so DeepSpeed's tools (zero_to_fp32)
        open it as they open any DeepSpeed checkpoint; the run's ``latest`` is ours (checkpoint.py)."""
        self.generator.save_checkpoint(str(folder / "generator"), tag=TAG, save_latest=True)
        self.discriminator.save_checkpoint(str(folder / "discriminator"), tag=TAG, save_latest=True)

    def load(self, folder: Path) -> None:
        """Restore both engines' weights, optimizer states and step counters from ``folder``."""
        for name, engine in (("generator", self.generator), ("discriminator", self.discriminator)):
            check_pickled_classes(folder / name)
            path, _ = engine.load_checkpoint(str(folder / name), tag=TAG, load_optimizer_states=True,
                                             load_lr_scheduler_states=False)
            if path is None:
                raise FileNotFoundError(f"no {name} engine checkpoint in {folder / name}")
            _keep_fused(engine)

    def destroy(self) -> None:
        for engine in (self.generator, self.discriminator):
            engine.destroy()


def for_stage(stage: Stage, generator: nn.Module, discriminators: nn.Module, current: Engines | None,
              cfg: TrainConfig, micro_batch: int) -> Engines:
    """Engines for ``stage`` (its scales made active and trainable): ``current`` when the trainable
    generator parameters stay the same, else the generator engine is rebuilt and the parameters that
    keep training carry their Adam moments over."""
    params = list(generator.parameters())
    before = {id(p) for p in params if p.requires_grad} if current is not None else set()
    _set_scales(stage, generator)
    after = [p for p in params if p.requires_grad]
    if current is not None and {id(p) for p in after} == before:
        return current
    if current is None:
        return Engines(build(generator, cfg.generator, micro_batch), build(discriminators, cfg.discriminator, micro_batch))
    continuing = [p for p in after if id(p) in before]
    new = [p for p in after if id(p) not in before]
    carried = optimizer_state(current.generator, continuing)
    current.generator.destroy()
    engine = build(generator, cfg.generator, micro_batch, new_params=new)
    restored = load_optimizer_state(engine, continuing, carried)
    log.info("generator engine rebuilt for scales %s: %d tensors carry their Adam moments, %d start fresh",
             stage.trainable_scales, restored, len(new))
    index = {id(p): i for i, p in enumerate(params)}
    return Engines(engine, current.discriminator, [index[id(p)] for p in new])


def resumed(stage: Stage, generator: nn.Module, discriminators: nn.Module, cfg: TrainConfig, micro_batch: int,
            new_params: list[int], folder: Path) -> Engines:
    """The engines saved in checkpoint ``folder`` at ``stage``, with the generator's fresh param group
    ``new_params``: built with that layout, then loaded."""
    _set_scales(stage, generator)
    params = list(generator.parameters())
    built = Engines(build(generator, cfg.generator, micro_batch, new_params=[params[i] for i in new_params]),
                    build(discriminators, cfg.discriminator, micro_batch), list(new_params))
    built.load(folder)
    return built


def _set_scales(stage: Stage, generator: nn.Module) -> None:
    generator.set_active_scales(stage.scale + 1)
    generator.set_trainable_scales(stage.trainable_scales)
