#!/usr/bin/env bash
# The GPU paths end to end on one GPU, in under 8 minutes (issue 4). Prints one block per check;
# paste the output into docs/performance.md with the date and the card.
#
#   benchmarks/gpu_check.sh            (from the repository root, .venv installed with the CUDA torch)
#
# 1. DALI `mixed` (NVDEC) decoding of freshly packed demo shards: frames/s, and whether the lossless
#    4:4:4 label stream decodes on the GPU or needs data.loader.label_device=cpu.
# 2. One bf16 ZeRO-2 GAN step on one GPU with NCCL: step time, peak memory, FLOP/s as a fraction of
#    this card's measured bf16 matmul peak.
# 3. Save/resume round trip through the real trainer (torchrun, NCCL, bf16, ZeRO 2).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
TORCHRUN=${TORCHRUN:-$REPO/.venv/bin/torchrun}
WORK=${WORK:-$(mktemp -d /tmp/vid2vid-gpu-check.XXXXXX)}
export PYTHONPATH=$PWD MLFLOW_DISABLE_TELEMETRY=true PYTHONWARNINGS=ignore::FutureWarning
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions_vid2vid}
echo "== gpu_check $(date -u +%FT%TZ) work=$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

DATA=(data.shards=$WORK/shards data.synth.out=$WORK/synth data.pack.source=$WORK/synth
      data.synth.sequences=8 data.synth.frames=24 data.synth.height=128 data.synth.width=256
      data.clip_frames=8 data.pack.clip_stride=8 data.pack.clips_per_shard=4 data.pack.val_fraction=0.0)

echo "== 1. data: synth + pack, then DALI mixed decode"
# A file, not stdin: packing spawns worker processes, which must be able to import the main module.
cat > "$WORK/data.py" <<'EOF'
import sys, time, torch
from trainer.config import load
from dataio import pack, synth
from dataio.loader import build_loader


def main() -> None:
    cfg = load(None, sys.argv[1:])
    synth.generate(cfg.data.synth)
    pack.pack(cfg.data, progress=False)
    for label_device in ("same", "cpu"):
        cfg.data.loader.device, cfg.data.loader.label_device, cfg.data.loader.batch_size = "mixed", label_device, 4
        try:
            loader = build_loader(cfg.data, 128, 256, 8, epoch_seed=0)
            frames, started = 0, time.perf_counter()
            for epoch in range(3):
                for batch in loader:
                    frames += batch.rgb.shape[0] * batch.rgb.shape[1]
            torch.cuda.synchronize()
            took = time.perf_counter() - started
            print(f"mixed decode, label_device={label_device}: {frames} frames in {took:.2f} s = "
                  f"{frames / took:.0f} frames/s (256x128, T=8, batch 4; includes the first-epoch warm-up), "
                  f"rgb on {batch.rgb.device}")
        except Exception as err:  # NVDEC may refuse 4:4:4 VP9: that is the finding
            print(f"mixed decode, label_device={label_device}: FAILED: {type(err).__name__}: {str(err)[:300]}")


if __name__ == "__main__":  # packing spawns worker processes that import this file
    main()
EOF
timeout 180 "$PY" "$WORK/data.py" "${DATA[@]}"

echo "== 2. one bf16 ZeRO-2 GAN step on one GPU (NCCL)"
cat > "$WORK/step.py" <<'EOF'
import os, statistics, time, warnings
warnings.filterwarnings("ignore", category=FutureWarning)
import torch
from types import SimpleNamespace
from torch.utils.flop_counter import FlopCounterMode
from models.build import build
from models.config import ModelConfig
from trainer import distributed as dist, engines
from trainer.config import EngineConfig
from trainer.step import Discriminators, StepSettings, train_batch

dist.init()
dev = dist.device()
n = 8192
a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(20):
    a @ b
torch.cuda.synchronize()
peak = 20 * 2 * n ** 3 / (time.perf_counter() - t)
print(f"bf16 matmul peak (measured, {n}^3): {peak / 1e12:.0f} TFLOP/s")
del a, b

cfg = ModelConfig()
nets = build(cfg, 9)
ecfg = EngineConfig(zero_stage=2, precision="bf16")
pair = engines.Engines(engines.build(nets.generator, ecfg, 4),
                       engines.build(Discriminators(nets.image_discriminator, nets.temporal_discriminator), ecfg, 4))
settings = StepSettings(loss=cfg.loss, prev_frames=cfg.generator.prev_frames, frames_per_step=4,
                        temporal_frames=cfg.discriminator.temporal_frames,
                        temporal_scales=cfg.discriminator.temporal_scales, dtype=torch.bfloat16)
H, W, T, B = 256, 512, 4, 4
ids = torch.randint(0, 9, (B, T, H, W), device=dev)
batch = SimpleNamespace(rgb=torch.rand(B, T, 3, H, W, device=dev) * 2 - 1,
                        labels=torch.nn.functional.one_hot(ids, 9).permute(0, 1, 4, 2, 3).float(),
                        flow=torch.randn(B, T, 2, H, W, device=dev), flow_conf=torch.rand(B, T, 1, H, W, device=dev))
train_batch(pair, batch, settings)  # warm-up (cuDNN autotune, lazy optimizer state)
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
with FlopCounterMode(display=False) as counter:
    train_batch(pair, batch, settings)
flops = counter.get_total_flops()
times = []
for _ in range(5):
    torch.cuda.synchronize()
    t = time.perf_counter()
    train_batch(pair, batch, settings)
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
step = statistics.median(times)
print(f"bf16 ZeRO-2 step, demo model, {W}x{H}, T={T}, batch {B}: {step * 1000:.0f} ms (median of 5), "
      f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, {flops / 1e12:.2f} TFLOP/step, "
      f"{flops / step / 1e12:.1f} TFLOP/s = {flops / step / peak:.3f} of the measured bf16 peak")
pair.destroy()
dist.exit_process(0)
EOF
timeout 240 "$TORCHRUN" --standalone --nproc_per_node 1 "$WORK/step.py"

echo "== 3. save/resume round trip (trainer, torchrun, NCCL, bf16, ZeRO 2)"
RUN=(--config "$REPO/configs/tiny_train.yaml" data.shards=$WORK/shards data.clip_frames=8 data.loader.device=mixed
     data.loader.label_device=cpu train.generator.zero_stage=2 train.discriminator.zero_stage=2
     checkpoint.every_steps=2 checkpoint.keep=4 tracking.enabled=false)
mkdir -p "$WORK/a" "$WORK/b/checkpoints/tiny"
(cd "$WORK/a" && timeout 150 "$TORCHRUN" --standalone --nproc_per_node 1 -m trainer "${RUN[@]}" 2>&1 | grep -E "done:|Error")
cp -r "$WORK/a/checkpoints/tiny/step-000000002" "$WORK/b/checkpoints/tiny/"
(cd "$WORK/b" && timeout 150 "$TORCHRUN" --standalone --nproc_per_node 1 -m trainer "${RUN[@]}" \
    2>&1 | grep -E "resumed from|done:|Error")
"$PY" - "$WORK" <<'EOF'
import sys, torch
a = torch.load(f"{sys.argv[1]}/a/checkpoints/tiny/export/generator.pt", weights_only=True)["state_dict"]
b = torch.load(f"{sys.argv[1]}/b/checkpoints/tiny/export/generator.pt", weights_only=True)["state_dict"]
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"resume round trip: final generator weights max |uninterrupted - resumed| = {diff:.3g} "
      f"({'bit-identical' if diff == 0 else 'GPU kernels are not bit-deterministic by default'})")
EOF
echo "== gpu_check done"
