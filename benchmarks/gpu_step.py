"""One GAN step of the trainer (``trainer.step.train_batch``, real DeepSpeed engines) on one GPU: step
time, peak memory, FLOP/s as a fraction of this card's measured bf16 matmul peak, and where the time
goes (GPU kernel time against the step's, the costliest kernels), then a 4x larger batch and
channels_last inputs, then channels_last networks and inputs on ZeRO 0 engines against NCHW, and with
``--compile`` the compiled step (``train.compile``: the generator's scales and
the discriminators) against the eager one, with ``--layout channels-last`` laid out channels-last by
inductor (``train.channels_last``; ``both``: that, then NCHW); on a GPU the GPU's kernel time of each, and
how much of it is cuDNN converting NCHW to NHWC and back (inductor's own copies, e.g. of the weights
into the graph's layout, are not counted there).

    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_step.py                 # default model, 512x256
    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_step.py --config configs/paper.yaml \\
        --width 1024 --active-scales 2 --batch 1 --frames-per-step 2 --no-variants      # the paper model
    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_step.py --smoke [...]     # no GPU needed

With ``train.merge_passes`` (on by default) the step is timed once more with a pass per set of frames;
under ZeRO 1/2 without the gradient overflow check (``check_grad_overflow``), with the trainer's
one-pass check and with DeepSpeed's per-tensor one;
and with the label flow given (as the trainer's loop computes it, ahead of the step) against the step
computing it (one copy to the host and back, and OpenCV, while the GPU waits).
``benchmarks/gpu_check.sh`` runs the first two on a GPU. ``--smoke`` runs the same code on the CPU in
fp32 at 64x32 with one timed step: ``tests/integration/test_benchmark_gpu_step.py`` runs it, so that the
script works when a session finally has a GPU for it (GPU time is lent for minutes at a time).
Extra ``model.key=value`` arguments override the config (e.g. a smaller paper model for the smoke run).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch._prims_common import suggest_memory_format
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)

from dataio.config import DataConfig  # noqa: E402
from dataio.batch import ClipBatch  # noqa: E402
from models.build import build, count_parameters, label_channels  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from models.discriminators import compile_discriminators  # noqa: E402
from models.label_flow import clip_label_flows  # noqa: E402
from models.vgg import VGG19Features  # noqa: E402
from trainer import distributed as dist  # noqa: E402
from trainer import engines  # noqa: E402
from trainer.config import EngineConfig  # noqa: E402
from trainer.config_tree import load_config  # noqa: E402
from trainer.step import Discriminators, StepSettings, merged_passes, train_batch  # noqa: E402


@dataclass
class _Root:
    """The sections of a config file this script reads."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a config whose model and data.num_classes to use (default: the "
                                         "defaults, 8 classes + edges, as the earlier GPU rows measured)")
    parser.add_argument("--width", type=int, default=512, help="the finest active scale's width (height: half)")
    parser.add_argument("--active-scales", type=int, default=0, help="generator scales in use (0: all)")
    parser.add_argument("--frames", type=int, default=4, help="frames of each clip")
    parser.add_argument("--frames-per-step", type=int, default=0, help="train.frames_per_step (0: the clip)")
    parser.add_argument("--batch", type=int, default=4, help="clips per step")
    parser.add_argument("--zero", type=int, default=2, choices=[0, 1, 2], help="ZeRO stage of both engines")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--no-variants", action="store_true", help="skip the 4x batch and channels_last runs")
    parser.add_argument("--compile", metavar="MODE", choices=["default", "reduce-overhead", "max-autotune"],
                        help="then compile the step as train.compile does (the generator's scales, the "
                             "discriminators) and time it against eager")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of --compile (aot_eager: the capture without code generation)")
    parser.add_argument("--layout", choices=list(LAYOUTS), default="nchw",
                        help="with --compile (inductor): channels-last is train.channels_last, the compiled graphs "
                             "laid out channels-last; both: channels-last, then NCHW, compiled and timed in turn")
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, 64x32, one timed step")
    parser.add_argument("overrides", nargs="*", metavar="model.key=value")
    args = parser.parse_args(argv)
    if args.layout != "nchw" and not args.compile:
        parser.error("--layout needs --compile (train.channels_last lays out the compiled graphs)")
    if args.layout != "nchw" and args.compile_backend != "inductor":
        parser.error(f"--layout {args.layout} needs --compile-backend inductor, which lays out the graphs")
    if args.smoke:
        args.width, args.repeats = 64, 1
    return args


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measured_peak(dev: torch.device, dtype: torch.dtype, smoke: bool) -> float:
    """FLOP/s of a large matrix product, the best this card does in ``dtype``."""
    n = 256 if smoke else 8192
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    started = time.perf_counter()
    for _ in range(20):
        a @ b
    sync()
    return 20 * 2 * n ** 3 / (time.perf_counter() - started)


def random_clips(dev: torch.device, b: int, t: int, channels: int, height: int, width: int,
                 channels_last: bool = False) -> ClipBatch:
    ids = torch.randint(0, channels, (b, t, height, width), device=dev)
    clips = dict(rgb=torch.rand(b, t, 3, height, width, device=dev) * 2 - 1,
                 labels=torch.nn.functional.one_hot(ids, channels).permute(0, 1, 4, 2, 3).float(),
                 flow=torch.randn(b, t, 2, height, width, device=dev),
                 flow_conf=torch.rand(b, t, 1, height, width, device=dev))
    if channels_last:  # each frame [B, C, H, W] a channels_last view; convolutions follow their input's layout
        clips = {k: v.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) for k, v in clips.items()}
    return ClipBatch(**clips, keys=[f"random-{i}" for i in range(b)], draws=[])


def median_seconds(step, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``step``, the device synchronised around each."""
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --layout: train.channels_last of each compiled step, in turn (channels-last first: should a timeout cut
# the run, it is the one not measured before).
LAYOUTS = {"nchw": (False,), "channels-last": (True,), "both": (True, False)}

# cuDNN's kernels that convert an NCHW input to NHWC and the output back, around each bf16 convolution.
LAYOUT_CONVERSIONS = ("nchwToNhwc", "nhwcToNchw")


def kernel_seconds(events) -> tuple[float, float]:
    """GPU kernel time of a profiled step (``key_averages``) and the part of it cuDNN spent converting
    layouts. Kernels only: op-level rows carry their kernels' time too and would count it twice."""
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    return busy, sum(e.self_device_time_total for e in kernels if any(n in e.key for n in LAYOUT_CONVERSIONS)) / 1e6


def kernel_line(events, step: float) -> str:
    busy, converting = kernel_seconds(events)
    return (f"GPU kernels run {busy * 1000:.0f} ms of the {step * 1000:.0f} ms step ({busy / step:.2f}), "
            f"{converting * 1000:.0f} ms of them cuDNN's NCHW<->NHWC conversions ({converting / max(busy, 1e-9):.2f})")


def profiled(step, cuda: bool):
    """The torch profiler's ``key_averages`` of one call of ``step``, with the GPU's kernels if ``cuda``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        sync()
    return prof.key_averages()


class ConvLayouts(TorchDispatchMode):
    """Counts the forward convolutions and those whose input is channels_last."""

    def __init__(self) -> None:
        super().__init__()
        self.total = self.channels_last = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.convolution:
            self.total += 1
            # The layout the convolution takes the input in (a frame sliced from a channels_last clip is
            # not channels_last-contiguous, yet is read as channels_last).
            self.channels_last += args[0].dim() == 4 and suggest_memory_format(args[0]) == torch.channels_last
        return func(*args, **(kwargs or {}))


def channels_last_trial(model: ModelConfig, channels: int, active: int, precision: str, settings: StepSettings,
                        clips_in, batch_size: int, repeats: int) -> None:
    """The step with the networks and the inputs channels_last (issue: cuDNN converting NCHW around each
    bf16 convolution), against the same step NCHW, both on ZeRO 0 engines: the one stage that keeps a
    module's own weights (ZeRO 1/2 make them views into flat buffers, NCHW). Not a setting of the trainer
    yet: this measures whether it would pay. ``clips_in(layout)``: the step's inputs in that layout. Prints
    the times and how many forward convolutions saw a channels_last input; checks the weights stay
    channels_last through the steps."""
    results = {}
    for layout in ("NCHW", "channels_last"):
        torch.manual_seed(0)
        nets = build(model, channels)
        nets.generator.set_active_scales(active)
        discriminators = Discriminators(nets.image_discriminator, nets.temporal_discriminator)
        zero0 = EngineConfig(zero_stage=0, precision=precision)
        pair = engines.Engines(engines.build(nets.generator, zero0, batch_size),
                               engines.build(discriminators, zero0, batch_size))
        vgg = [settings.vgg] if settings.vgg is not None else []  # the perceptual terms' network too
        if layout == "channels_last":  # after the build: DeepSpeed's initial broadcast views each weight as
            for module in (nets.generator, discriminators, *vgg):  # bytes, which a channels_last one refuses
                module.to(memory_format=torch.channels_last)
        clips = clips_in(layout)
        train_batch(pair, clips, settings)  # warm-up
        with ConvLayouts() as seen:
            train_batch(pair, clips, settings)
        took = median_seconds(lambda: train_batch(pair, clips, settings), repeats)
        weights = [p for p in pair.generator.module.parameters() if p.dim() == 4]
        kept = sum(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in weights)
        results[layout] = (took, seen, kept, len(weights))
        pair.destroy()
        for module in vgg:
            module.to(memory_format=torch.contiguous_format)
        del pair, nets, discriminators, clips, weights  # engines sit in reference cycles: free them now
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    (nchw, nchw_seen, _, _), (last, seen, kept, weights) = results["NCHW"], results["channels_last"]
    print(f"channels_last networks and inputs (ZeRO 0 engines): {last * 1000:.0f} ms per step against NCHW's "
          f"{nchw * 1000:.0f} ms: {last / nchw:.2f}x the NCHW step's time; {seen.channels_last} of {seen.total} forward "
          f"convolutions saw a channels_last input ({nchw_seen.channels_last} NCHW); {kept} of {weights} generator "
          "conv weights still channels_last after the steps", flush=True)


def main() -> None:
    args = parse()
    dist.init()
    dev = dist.device()
    cuda = dev.type == "cuda"
    if not cuda and not args.smoke:
        raise SystemExit("no GPU here: run with --smoke to check the script on the CPU")
    dtype = torch.bfloat16 if cuda else torch.float32
    precision = "bf16" if cuda else "fp32"
    peak = measured_peak(dev, dtype, args.smoke)
    print(f"{precision} matmul peak (measured): {peak / 1e12:.2f} TFLOP/s on {torch.cuda.get_device_name() if cuda else 'CPU'}")

    tree = load_config(_Root, args.config, args.overrides)
    model = tree.model
    channels = label_channels(tree.data.num_classes, has_edges=True) if args.config else 9
    nets = build(model, channels)
    generator = nets.generator
    active = args.active_scales or model.generator.num_scales
    generator.set_active_scales(active)
    vgg = None
    if model.loss.perceptual > 0 or model.loss.style > 0:  # the paper trains with it; random weights: only the cost matters
        vgg = VGG19Features().to(dev).eval().requires_grad_(False)
    ecfg = EngineConfig(zero_stage=args.zero, precision=precision)
    pair = engines.Engines(engines.build(generator, ecfg, args.batch),
                           engines.build(Discriminators(nets.image_discriminator, nets.temporal_discriminator),
                                         ecfg, args.batch))
    settings = StepSettings(loss=model.loss, frames_per_step=args.frames_per_step or args.frames,
                            temporal_frames=model.discriminator.temporal_frames if nets.temporal_discriminator else 0,
                            temporal_scales=model.discriminator.temporal_scales, dtype=dtype, vgg=vgg,
                            **merged_passes(model))  # train.merge_passes' default
    height, width, frames, batch_size = args.width // 2, args.width, args.frames, args.batch
    label = (f"{precision} ZeRO-{args.zero} step, {Path(args.config).stem if args.config else 'default'} model "
             f"({count_parameters(generator, trainable_only=True) / 1e6:.1f}M G params, {active} scale(s)), "
             f"{width}x{height}, T={frames}, chunks of {settings.frames_per_step}, batch {batch_size}")

    batch = random_clips(dev, batch_size, frames, channels, height, width)
    train_batch(pair, batch, settings)  # warm-up (cuDNN autotune, lazy optimizer state)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        train_batch(pair, batch, settings)
    flops = counter.get_total_flops()

    def median_step(clips: ClipBatch, how: StepSettings = settings) -> float:
        return median_seconds(lambda: train_batch(pair, clips, how), args.repeats)

    base = None
    for benchmark in ((False, True) if cuda else (False,)):  # cuDNN picking each conv's algorithm by timing
        torch.backends.cudnn.benchmark = benchmark
        if benchmark:
            train_batch(pair, batch, settings)  # autotunes each conv shape once
        step = median_step(batch)
        base = base or step
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "n/a on the CPU"
        print(f"{label}, cudnn.benchmark={benchmark}: {step * 1000:.0f} ms (median of {args.repeats}), "
              f"peak memory {memory}, {flops / 1e12:.3f} TFLOP/step, {flops / step / 1e12:.2f} TFLOP/s = "
              f"{flops / step / peak:.3f} of the measured {precision} peak", flush=True)
    torch.backends.cudnn.benchmark = False

    # Where the time goes: kernel time against the step's wall time, and the costliest kernels.
    events = profiled(lambda: train_batch(pair, batch, settings), cuda)
    # Operators as the dispatcher sees them (nested ones too: aten::conv2d and the convolution it calls),
    # and kernels launched: each costs the host a few microseconds whatever its size.
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    launches = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"per step: {ops} ATen operator calls (nested included), {launches} GPU kernels; host time per "
          f"operator call {base / max(ops, 1) * 1e6:.1f} us of the step")
    if cuda:
        print(f"{kernel_line(events, base)}; the rest of the step is the host launching work (Python, "
              "DeepSpeed hooks, kernel launches)")
    print(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=12,
                       max_name_column_width=60), flush=True)

    if not args.no_variants:  # what a user can change without code: a larger batch, channels_last inputs
        for name, clips, samples in (
                (f"batch {4 * batch_size}", random_clips(dev, 4 * batch_size, frames, channels, height, width),
                 4 * batch_size),
                (f"batch {batch_size}, channels_last inputs",
                 random_clips(dev, batch_size, frames, channels, height, width, channels_last=True), batch_size)):
            train_batch(pair, clips, settings)  # warm-up for the new shapes / layout
            took = median_step(clips)
            print(f"{name}: {took * 1000:.0f} ms per step, time per sample {took / samples / (base / batch_size):.2f} "
                  f"of batch {batch_size}'s", flush=True)
        channels_last_trial(model, channels, active, precision, settings,
                            lambda layout: random_clips(dev, batch_size, frames, channels, height, width,
                                                        channels_last=layout == "channels_last"),
                            batch_size, args.repeats)
    if any(merged_passes(model).values()):  # against a pass per set of frames, in this invocation
        apart = dataclasses.replace(settings, **merged_passes(model, False))
        train_batch(pair, batch, apart)  # warm-up: the passes' own shapes
        took = median_step(batch, apart)
        print(f"a pass per set of frames (train.merge_passes=false): {took * 1000:.0f} ms per step against "
              f"merged {base * 1000:.0f} ms: merged is {took / base:.2f}x faster", flush=True)
    # The gradient overflow check under ZeRO 1/2 (train.<engine>.check_grad_overflow, DeepSpeed's default
    # in bf16; it never runs in fp32): the step without it, with the trainer's one-pass check and with
    # DeepSpeed's per-tensor one, side by side.
    checking = [e.optimizer for e in (pair.generator, pair.discriminator)
                if hasattr(e.optimizer, "has_overflow_partitioned_grads_serial")]
    if checking:
        default = [(optimizer.check_grad_overflow, vars(optimizer).get("has_overflow_partitioned_grads_serial"))
                   for optimizer in checking]
        times = {}
        for variant in ("without", "one pass", "DeepSpeed's per tensor"):
            for optimizer in checking:
                optimizer.check_grad_overflow = variant != "without"
                vars(optimizer).pop("has_overflow_partitioned_grads_serial", None)
                if variant == "one pass":
                    optimizer.has_overflow_partitioned_grads_serial = functools.partial(engines._any_non_finite, optimizer)
            train_batch(pair, batch, settings)
            times[variant] = median_step(batch)
        for optimizer, (check, method) in zip(checking, default):
            optimizer.check_grad_overflow = check
            vars(optimizer).pop("has_overflow_partitioned_grads_serial", None)
            if method is not None:
                optimizer.has_overflow_partitioned_grads_serial = method
        how = "on by default" if precision == "bf16" else "switched on: DeepSpeed runs it for bf16 only"
        without, one_pass, theirs = (times[v] for v in ("without", "one pass", "DeepSpeed's per tensor"))
        print(f"gradient overflow check ({how}): {one_pass * 1000:.0f} ms per step with the trainer's one-pass "
              f"check, {theirs * 1000:.0f} ms with DeepSpeed's per-tensor one ({theirs / one_pass:.2f}x), "
              f"{without * 1000:.0f} ms without (check_grad_overflow: false; {one_pass / without:.2f}x the time "
              "with the one-pass check)", flush=True)
    if generator.label_prior:  # the trainer's loop computes it for the next batch while this one trains
        sync()
        started = time.perf_counter()
        ahead = dataclasses.replace(batch, label_flow=clip_label_flows(batch.labels))
        sync()
        flows = time.perf_counter() - started
        took = median_step(ahead)
        print(f"label flow computed ahead (trainer.batches.prepared): {took * 1000:.0f} ms per step against "
              f"{base * 1000:.0f} ms computing it in the step: {base / took:.2f}x faster (the flow alone "
              f"{flows * 1000:.0f} ms on the host)", flush=True)
    compiled = dataclasses.replace(settings, **merged_passes(model, compiled=True))  # as the trainer sets it
    for channels_last in LAYOUTS[args.layout] if args.compile else ():  # last: compiling changes the networks
        torch._dynamo.reset()  # a layout compiled before: its graphs (and CUDA graphs) go
        torch._dynamo.utils.counters.clear()
        layout = dict(backend=args.compile_backend, channels_last=channels_last)  # as the trainer does
        generator.compile_frame_step(args.compile, **layout)
        compile_discriminators(pair.discriminator.module, args.compile, **layout)
        started = time.perf_counter()
        train_batch(pair, batch, compiled)  # compiles each graph of the step (frames, updates, chunks)
        sync()
        compiling = time.perf_counter() - started
        took = median_step(batch, compiled)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        how = f"train.compile={args.compile}" + (", train.channels_last=true" if channels_last else "")
        print(f"compiled step ({how}, {args.compile_backend}: the generator's scales and the "
              f"discriminators, {graphs} graphs): {took * 1000:.0f} ms per step against eager's {base * 1000:.0f} ms: "
              f"{base / took:.2f}x faster (compiling took {compiling:.0f} s)", flush=True)
        if cuda:
            events = profiled(lambda: train_batch(pair, batch, compiled), cuda)
            print(f"compiled step{', channels-last' if channels_last else ''}: {kernel_line(events, took)}", flush=True)
    pair.destroy()
    dist.exit_process(0)


if __name__ == "__main__":
    main()
