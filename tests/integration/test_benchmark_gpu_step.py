"""benchmarks/gpu_step.py, the GPU check's step measurement, runs on the CPU (``--smoke``) as gpu_check.sh
runs it on a GPU: under torchrun, real DeepSpeed engines, the trainer's own step. A session lent a GPU
has minutes of it; a script that broke since the last one would spend them."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_the_paper_model_step_runs_through_the_gpu_script_on_the_cpu() -> None:
    # The paper config as gpu_check.sh passes it (two active scales, chunks of 2, VGG terms, batch norm),
    # made small enough for a CPU: the same code paths, not the same size.
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "1", str(REPO / "benchmarks" / "gpu_step.py"),
               "--smoke", "--config", str(REPO / "configs" / "paper.yaml"), "--active-scales", "2", "--batch", "1",
               "--frames", "3", "--frames-per-step", "2", "model.generator.ngf=8", "model.generator.max_channels=16",
               "model.generator.n_blocks=2", "model.generator.n_blocks_local=1", "model.discriminator.ndf=8",
               # The compiled step over the DeepSpeed engines, captured as on a GPU but run by aot_eager:
               # inductor's C++ kernels would take minutes to build here.
               "--compile", "default", "--compile-backend", "aot_eager"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    step = re.search(r"fp32 ZeRO-2 step, paper model \(([\d.]+)M G params, 2 scale\(s\)\), 64x32, T=3, chunks of 2, "
                     r"batch 1, cudnn.benchmark=False: (\d+) ms .* ([\d.]+) TFLOP/step, .* = ([\d.]+) of the measured "
                     r"fp32 peak", done.stdout)
    assert step, done.stdout[-3000:]
    assert float(step.group(1)) > 0 and int(step.group(2)) > 0 and float(step.group(3)) > 0
    assert 0 < float(step.group(4)) < 1.5, step.group(0)
    assert "Self CPU time total" in done.stdout  # the profile's table
    counts = re.search(r"per step: (\d+) ATen operator calls \(nested included\), (\d+) GPU kernels", done.stdout)
    assert counts and int(counts.group(1)) > 1000 and int(counts.group(2)) == 0, done.stdout[-3000:]  # no GPU here
    assert re.search(r"batch 4: \d+ ms per step, time per sample [\d.]+ of batch 1's", done.stdout)
    assert re.search(r"batch 1, channels_last inputs: \d+ ms per step", done.stdout)
    # Networks and inputs channels_last (ZeRO 0 engines, converted after DeepSpeed's initial broadcast):
    # most convolutions see that layout, the weights keep it through the steps, NCHW sees none.
    last = re.search(r"channels_last networks and inputs \(ZeRO 0 engines\): \d+ ms per step against NCHW's \d+ ms: "
                     r"[\d.]+x the NCHW step's time; (\d+) of (\d+) forward convolutions saw a channels_last input \((\d+) NCHW\); "
                     r"(\d+) of (\d+) generator conv weights still channels_last after the steps", done.stdout)
    assert last, done.stdout[-3000:]
    assert int(last[1]) > int(last[2]) // 2 and int(last[3]) == 0 and last[4] == last[5] != "0", last.group(0)
    assert re.search(r"a pass per set of frames \(train.merge_passes=false\): \d+ ms per step against merged "
                     r"\d+ ms: merged is [\d.]+x faster", done.stdout), done.stdout[-3000:]
    assert re.search(r"gradient overflow check \(switched on: DeepSpeed runs it for bf16 only\): \d+ ms per step with "
                     r"the trainer's one-pass check, \d+ ms with DeepSpeed's per-tensor one \([\d.]+x\), \d+ ms without "
                     r"\(check_grad_overflow: false; [\d.]+x the time with the one-pass check\)", done.stdout), \
        done.stdout[-3000:]
    ahead = re.search(r"label flow computed ahead \(trainer.batches.prepared\): (\d+) ms per step against (\d+) ms "
                      r"computing it in the step: ([\d.]+)x faster \(the flow alone (\d+) ms on the host\)", done.stdout)
    assert ahead and int(ahead.group(1)) > 0 and float(ahead.group(3)) > 0, done.stdout[-3000:]
    compiled = re.search(r"compiled step \(train.compile=default, aot_eager: the generator's scales and the "
                         r"discriminators, (\d+) graphs\): (\d+) ms per step against eager's (\d+) ms: ([\d.]+)x faster "
                         r"\(compiling took \d+ s\)", done.stdout)
    assert compiled and int(compiled.group(2)) > 0 and float(compiled.group(4)) > 0, done.stdout[-3000:]
    # Two scales' frame steps (the first frame, the later ones) and the PatchGANs of both updates.
    assert int(compiled.group(1)) >= 4, compiled.group(0)



@pytest.mark.parametrize("arguments,words", [
    (["--layout", "channels-last"], "--layout needs --compile"),
    (["--layout", "both", "--compile", "default", "--compile-backend", "aot_eager"],
     "--layout both needs --compile-backend inductor"),
])
def test_a_layout_the_compiler_cannot_give_is_refused_before_any_step(arguments: list[str], words: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_step.py"), "--smoke", *arguments],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and words in done.stderr, done.stderr[-2000:]


def test_every_gpu_step_command_of_the_gpu_check_parses() -> None:
    """gpu_check.sh runs only on a lent GPU, minutes at a time: a flag it passes that gpu_step.py no
    longer takes would cost a session its check. Each of its gpu_step.py commands, as written there."""
    import shlex

    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_step import parse

    script = (REPO / "benchmarks" / "gpu_check.sh").read_text().replace("\\\n", " ")
    commands = [line.split("benchmarks/gpu_step.py", 1)[1].split("||")[0]
                for line in script.splitlines() if "benchmarks/gpu_step.py" in line and not line.lstrip().startswith("#")]
    assert len(commands) == 3, commands  # check 2: the default and the paper model; check 5
    for command in commands:
        args = parse(shlex.split(command))
        assert args.compile or args.config, command
    assert any(parse(shlex.split(command)).layout == "both" for command in commands)


def test_the_gpu_checks_configs_load() -> None:
    """Check 1's data settings and check 3's trainer run, as bash expands them from gpu_check.sh, load
    as the scripts they feed load them: a key renamed since would otherwise fail only on a lent GPU."""
    from trainer.config import load

    arrays = subprocess.run(
        ["bash", "-c", 'eval "$(sed -n "/^DATA=(/,/)$/p; /^RUN=(/,/)$/p" benchmarks/gpu_check.sh)"; '
                       'printf "%s\\n" "${DATA[@]}"; echo --; printf "%s\\n" "${RUN[@]}"'],
        cwd=REPO, env=dict(os.environ, WORK="/tmp/gpu-check", SIZE="128x256", SEQUENCES="8", REPO=str(REPO)),
        capture_output=True, text=True, check=True).stdout.split("\n--\n")
    data, run = (part.split() for part in arrays)
    cfg = load(None, data)  # check 1's data.py: load(None, sys.argv[1:])
    assert (cfg.data.synth.height, cfg.data.synth.width, cfg.data.shards) == (128, 256, "/tmp/gpu-check/shards")
    assert run[0] == "--config"  # check 3: python -m trainer --config FILE key=value ...
    cfg = load(run[1], run[2:])
    assert cfg.data.loader.device == "mixed" and cfg.train.generator.zero_stage == 2 and not cfg.tracking.enabled
