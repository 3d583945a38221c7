#!/usr/bin/env bash
# The GPU paths end to end on one GPU: checks 1-4 in about 10 minutes, 5 in up to 10 more (each check
# has its own timeout; CHECKS picks a subset, e.g. CHECKS="2 5"). Prints one block per check; paste the
# output into docs/performance.md with the date and the card.
#
#   benchmarks/gpu_check.sh            (from the repository root, .venv installed with the CUDA torch)
#   PY=python3 benchmarks/gpu_check.sh (another interpreter; torchrun is taken from beside it)
#
# On a CUDA 13 machine install nvidia-dali-cuda130 in place of the cuda120 wheel that pyproject names.
# A machine that reaches no package index takes DeepSpeed and pydantic as wheels (docs/platform.md).
# Each check runs on its own: one that fails prints FAILED with its exit status and the next one runs.
#
# 1. Freshly packed demo shards: whether NVDEC decodes the lossless 4:4:4 label/flow streams right
#    (the config refuses data.loader.label_device=same while it does not), and the loader's frames/s
#    on `mixed` (NVDEC) against `cpu` in the same process.
# 2. One bf16 ZeRO-2 GAN step on one GPU with NCCL (benchmarks/gpu_step.py): step time, peak memory,
#    FLOP/s as a fraction of this card's measured bf16 matmul peak, with cudnn.benchmark off and on; the
#    GPU's kernel time against the step's (a profile), and per-sample time at 4x the batch and with
#    channels_last inputs, channels_last networks and inputs against NCHW (ZeRO 0 engines), and the
#    compiled step (train.compile) against eager. Then the paper
#    model (configs/paper.yaml, two scales at 1024x512, one clip).
# 3. Save/resume round trip through the real trainer (torchrun, NCCL, bf16, ZeRO 2).
# 4. The GPU-marked tests (mixed loader against cpu, networks on the GPU against the CPU).
# 5. The paper model's step (as in 2) compiled channels-last (train.compile=reduce-overhead with
#    train.channels_last), then compiled NCHW, against eager: time, and how much of the GPU's kernel
#    time cuDNN spends converting layouts in each (minutes of compiling: last, so that it cannot cost
#    the other checks; should the timeout cut the NCHW one, run check 5's gpu_step.py command by hand
#    with --layout nchw).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
TORCHRUN=${TORCHRUN:-$("$PY" -c 'import pathlib, sys; print(pathlib.Path(sys.executable).with_name("torchrun"))')}
WORK=${WORK:-$(mktemp -d /tmp/vid2vid-gpu-check.XXXXXX)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} MLFLOW_DISABLE_TELEMETRY=true PYTHONWARNINGS=ignore::FutureWarning
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions_vid2vid}
echo "== gpu_check $(date -u +%FT%TZ) work=$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import sys, torch, deepspeed
try:
    import nvidia.dali as dali
    dali = dali.__version__
except ImportError:
    dali = "not installed"
card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"deepspeed {deepspeed.__version__}, DALI {dali}, {card}")' \
    2>&1 | grep -v Warning
failed() { echo "FAILED: $1 (exit $2)"; }
# Checks 1 and 3 and the loader's GPU test need DALI; a machine without it (no package index, and
# DALI's CUDA 13 wheel is over 400 MB) still runs 2 and the model tests.
HAVE_DALI=$("$PY" -c 'import nvidia.dali' >/dev/null 2>&1 && echo 1 || echo 0)
need_dali() { [ "$HAVE_DALI" = 1 ] || { echo "== $1: skipped, nvidia.dali does not import here"; return 1; }; }
CHECKS=${CHECKS:-1 2 3 4 5}  # a subset, e.g. CHECKS="1 4"; 3 needs the shards that 1 packs
SIZE=${SIZE:-128x256}      # HEIGHTxWIDTH of the clips that 1 makes and times the loaders on
SEQUENCES=${SEQUENCES:-8}  # synthetic sequences of 24 frames that 1 makes (3 clips of 8 each)
want() { [[ " $CHECKS " == *" $1 "* ]]; }

DATA=(data.shards=$WORK/shards data.synth.out=$WORK/synth data.pack.source=$WORK/synth
      data.synth.sequences=$SEQUENCES data.synth.frames=24 data.synth.height=${SIZE%x*} data.synth.width=${SIZE#*x}
      data.clip_frames=8 data.pack.clip_stride=8 data.pack.clips_per_shard=4 data.pack.val_fraction=0.0)

if want 1 && need_dali "1. data"; then
echo "== 1. data: synth + pack, NVDEC on the lossless streams, then the mixed loader against the cpu one"
# A file, not stdin: packing spawns worker processes, which must be able to import the main module.
cat > "$WORK/data.py" <<'EOF'
import sys, time
import numpy as np
import torch
from trainer.config import load
from dataio import pack, reader, synth
from dataio.loader import build_loader
from dataio.pipeline import Draw, GraphSpec, build, feed


def host(tensor_list) -> np.ndarray:
    return np.asarray((tensor_list.as_cpu() if hasattr(tensor_list, "as_cpu") else tensor_list).as_array())


def nvdec_on_lossless(cfg) -> None:
    """One clip's label and flow streams decoded by NVDEC and on the CPU (the option the config refuses)."""
    clip = reader.first_sample(cfg.data.shards, reader.list_shards(cfg.data.shards, "train"))
    m = clip.meta
    out = {}
    for device in ("cpu", "mixed"):
        spec = GraphSpec(height=m.height, width=m.width, frames=m.frames, batch_size=1, threads=2,
                         num_classes=cfg.data.num_classes, label_kind=m.label_kind, has_edges=m.has_edges,
                         device=device, label_device="same", device_id=0 if device == "mixed" else None,
                         augment_in_graph=False)
        try:
            pipe = build(spec)
            feed(pipe, spec, [clip.streams], [Draw(0, (0, 0, m.height, m.width), False)], [m])
            pipe.schedule_run()
            out[device] = dict(zip(spec.outputs, (host(o) for o in pipe.outputs())))
        except Exception as err:
            print(f"NVDEC on lossless 4:4:4 streams: {device} decode FAILED: {type(err).__name__}: {str(err)[:300]}")
            return
    label = (out["cpu"]["label"] != out["mixed"]["label"]).mean()
    flow = np.abs(out["cpu"]["flow"].astype(np.int16) - out["mixed"]["flow"].astype(np.int16))
    print(f"NVDEC on lossless 4:4:4 streams ({m.width}x{m.height}): class ids differ from the CPU decode in "
          f"{label:.1%} of pixels (largest id {out['mixed']['label'].max()}, {cfg.data.num_classes} classes); "
          f"flow bytes differ by {flow.mean():.2f} on average, {flow.max()} at most -> "
          f"{'usable' if label == 0 and flow.max() <= 1 else 'WRONG: keep data.loader.label_device=cpu'}")


def frames_per_s(cfg, device: str) -> float:
    cfg.data.loader.device, cfg.data.loader.batch_size, cfg.data.loader.threads = device, 4, 4
    height, width = cfg.data.synth.height, cfg.data.synth.width
    loader = build_loader(cfg.data, height, width, 8, epoch_seed=0)
    started = time.perf_counter()
    for batch in loader:  # the first epoch pays for pipeline build and decoder warm-up
        pass
    torch.cuda.synchronize()
    warm_up = time.perf_counter() - started
    frames, started = 0, time.perf_counter()
    for epoch in range(8):
        for batch in loader:
            frames += batch.rgb.shape[0] * batch.rgb.shape[1]
    torch.cuda.synchronize()
    took = time.perf_counter() - started
    print(f"loader {device:5s}: {frames} frames in {took:.2f} s = {frames / took:.0f} frames/s ({width}x{height}, T=8, "
          f"batch 4, 4 DALI threads, every stream; 8 epochs after a {warm_up:.1f} s first one), "
          f"batches on {batch.rgb.device}, {loader.stats.skipped} skipped")
    return frames / took


def main() -> None:
    cfg = load(None, sys.argv[1:])
    synth.generate(cfg.data.synth)
    pack.pack(cfg.data, progress=False)
    nvdec_on_lossless(cfg)
    cpu = frames_per_s(cfg, "cpu")
    mixed = frames_per_s(cfg, "mixed")
    print(f"mixed/cpu loader throughput: {mixed / cpu:.2f}")


if __name__ == "__main__":  # packing spawns worker processes that import this file
    main()
EOF
timeout 180 "$PY" "$WORK/data.py" "${DATA[@]}" || failed "1. data" $?
fi

if want 2; then
echo "== 2. one bf16 ZeRO-2 GAN step on one GPU (NCCL): the default model at 512x256, then the paper model at 1024x512"
# benchmarks/gpu_step.py (tested on the CPU with --smoke): the trainer's own step over real engines.
# Last in that run, the step compiled as train.compile does (the generator's scales and the discriminators)
# with CUDA graphs, against eager (compiling: minutes).
timeout 420 "$TORCHRUN" --standalone --nproc_per_node 1 benchmarks/gpu_step.py --compile reduce-overhead \
    || failed "2. step" $?
timeout 300 "$TORCHRUN" --standalone --nproc_per_node 1 benchmarks/gpu_step.py --config configs/paper.yaml \
    --width 1024 --active-scales 2 --batch 1 --frames-per-step 2 --repeats 3 --no-variants || failed "2. paper step" $?
fi

if want 3 && need_dali "3. save/resume"; then
echo "== 3. save/resume round trip (trainer, torchrun, NCCL, bf16, ZeRO 2)"
RUN=(--config "$REPO/configs/tiny_train.yaml" data.shards=$WORK/shards data.clip_frames=8 data.loader.device=mixed
     train.generator.zero_stage=2 train.discriminator.zero_stage=2
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
[ $? = 0 ] || failed "3. resume" 1
fi

if want 4; then
echo "== 4. GPU-marked tests"
GPU_TESTS=(tests/unit/models/test_gpu.py)
[ "$HAVE_DALI" = 1 ] && GPU_TESTS+=(tests/unit/dataio/test_loader_gpu.py)
timeout 180 "$PY" -m pytest -q -m gpu -p no:cacheprovider "${GPU_TESTS[@]}" || failed "4. tests" $?
fi
if want 5; then
echo "== 5. the paper model's step compiled channels-last (train.channels_last), then NCHW, against eager, 1024x512"
timeout 600 "$TORCHRUN" --standalone --nproc_per_node 1 benchmarks/gpu_step.py --config configs/paper.yaml \
    --width 1024 --active-scales 2 --batch 1 --frames-per-step 2 --repeats 3 --no-variants \
    --compile reduce-overhead --layout both || failed "5. channels-last" $?
fi
echo "== gpu_check done"
