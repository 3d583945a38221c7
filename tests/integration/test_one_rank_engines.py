"""One-rank ZeRO 0 engines. They skip DeepSpeed's all-reduce of the gradients (the identity there, but a
flatten, reduce and copy back of every gradient) and keep what it does besides: zeros for a trainable
parameter that got no gradient. The trainer's step must train bit for bit as with DeepSpeed's own.
And in bf16 (DeepSpeed's wrapper hands Adam fp32 copies of the weights) a rebuild carries the moments."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("one_rank_engines_worker.py")


@functools.cache
def worker() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::FutureWarning")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a one-rank group of its own
    done = subprocess.run([sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_one_rank_trains_as_with_deepspeeds_reduction() -> None:
    for precision in ("fp32", "bf16"):
        r = worker()[precision]
        assert r["replaced"], r
        # The first chunk has no temporal window: the temporal discriminator gets zeros, as on N ranks
        # (at bf16 DeepSpeed's wrapper would also fill them; at fp32 nothing else does).
        assert r["filled"] > 0, r
        assert r["identical"], r


def test_bf16_zero0_rebuild_carries_adams_moments() -> None:
    r = worker()["bf16_carry"]
    assert r["moments_nonzero"], r
    assert r["carried"] == r["restored"] == r["params"], r
    assert r["same"], r


def test_without_the_overflow_check_bf16_trains_the_same() -> None:
    """``check_grad_overflow: false`` drops a check that only reads finite gradients (it skips a step
    whose gradients are not finite, which these are): the same weights, after steps that moved them."""
    assert worker()["bf16_zero2_trained"] > 0 and worker()["overflow_check_only_reads"]


def test_the_one_pass_overflow_check_skips_a_nan_or_inf_gradient_as_deepspeeds_does() -> None:
    """bf16 ZeRO 1/2 check the gradients for inf/NaN in one pass (``engines._any_non_finite``), not with
    DeepSpeed's operators per tensor: under ZeRO 1 and 2, a step whose gradients hold one NaN, or one
    -inf, is skipped (no weight moves), the next, finite one trains; a huge finite gradient (1e30) is
    stepped, by both checks; and a run trains bit for bit as with DeepSpeed's check."""
    r = worker()["bad_gradient"]
    assert len(r) == 12 and all(v["one_pass"] for k, v in r.items() if k.startswith("one_pass")), r
    for case, v in r.items():
        assert v["moved"] == ([4, 4] if case.endswith("1e+30") else [0, 4]) and v["finite"], (case, r)
    assert worker()["one_pass_check_same_as_deepspeeds"]


def test_a_bf16_zero0_engine_trains_channels_last_weights() -> None:
    """What benchmarks/gpu_step.py's channels-last trial relies on: ZeRO 0 keeps a module's own weights,
    so weights made channels_last after the build keep that layout and are trained (bf16: DeepSpeed's
    wrapper copies its fp32 masters into them each step)."""
    r = worker()["channels_last_zero0_bf16"]
    assert r == {"moved": [4, 4], "channels_last_weights": 2}, r
