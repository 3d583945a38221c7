"""The ``cluster`` and ``sweep`` sections, and the root config the ``vid2vid`` CLI loads.

``RootConfig`` is the trainer's ``Config`` plus the two sections only this layer reads. It subclasses
``trainer.config.Config`` rather than adding a field there, so imports keep pointing down (the trainer
never imports ``cluster``); a ``RootConfig`` *is* a ``Config`` and goes to ``trainer.loop.train`` as is.
No torch or Ray import here: the CLI validates a config before anything heavy starts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from trainer.config import EVAL_METRICS, Config
from trainer.config_tree import load_config

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass
class ClusterConfig:
    """How `vid2vid train` runs the trainer: Ray Train workers, failure handling, checkpoint storage."""
    address: str = ""
    """Ray cluster to join (`ray://...`, `HOST:PORT`, `auto`). Empty: `RAY_ADDRESS` when set (as inside
    a Ray job), else an embedded Ray started on 127.0.0.1 for this command and stopped after it."""
    name: str = "vid2vid"
    """Run name. The same name and `storage_path` resume the run from its last reported checkpoint."""
    num_workers: int = 2
    """Training processes (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker and NCCL; otherwise CPU workers and gloo."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves per worker (the DALI loader's threads run inside it)."""
    storage_path: str = "runs"
    """Where Ray keeps the reported checkpoints: a local folder, or `s3://bucket/prefix` (endpoint and
    keys from the AWS_* variables) that every node can reach."""
    max_failures: int = 2
    """Worker-group restarts from the last checkpoint after a worker dies; -1 restarts without limit."""
    num_cpus: int = 0
    """Embedded Ray only: logical CPUs it offers; 0 means the machine's cores. Raising it past the cores
    lets more workers or sweep trials run at once, each slower."""
    temp_dir: str = ""
    """Embedded Ray only: its session folder (logs, sockets); empty uses Ray's default (/tmp/ray)."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must be 1-100 letters, digits, '_', '.', '-' "
                             "(it names folders and runs)")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be >= -1 (-1: no limit), got {self.max_failures}")
        if self.num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus}")
        if not self.storage_path:
            raise ValueError("storage_path must be a folder or s3://bucket/prefix")


SEARCH_KINDS = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "randint": 2}
"""Search-space distributions and the number of values each takes (None: one or more)."""


@dataclass
class SweepConfig:
    """`vid2vid sweep`: a Ray Tune search over config keys, trials stopped early by ASHA."""
    search: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    """Dotted config key -> one distribution: `{choice: [a, b]}`, `{grid: [a, b]}` (every value),
    `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`, `{randint: [lo, hi]}` (hi excluded)."""
    metric: str = "eval/psnr"
    """What ASHA compares and the best trial and checkpoint are chosen by, reported at each
    checkpoint: a held-out score (``eval/psnr``, ``eval/ssim``, ``eval/warp_error``,
    ``eval/warp_ratio``: the ``eval`` section says on which clips and at what size; set
    ``eval.height/width`` to compare reports of every stage), or a training metric (``g/flow`` ...:
    losses are weighted, so never a term whose weight the search changes)."""
    mode: Literal["min", "max"] = "max"
    num_samples: int = 4
    """Trials drawn (with `grid` keys: repeats of the whole grid)."""
    max_concurrent: int = 0
    """Trials running at once; 0 lets Ray run as many as the resources allow."""
    grace_period: int = 1
    """ASHA: checkpoints (reports) a trial makes before it can be stopped."""
    reduction_factor: int = 2
    """ASHA: the top 1/reduction_factor of trials continue at each rung."""
    publish_name: str = "vid2vid"
    """Registered model the best trial's generator is published to; empty skips publishing."""
    publish_alias: str = "champion"

    def __post_init__(self) -> None:
        for key, spec in self.search.items():
            if not isinstance(spec, dict) or len(spec) != 1:
                raise ValueError(f"search.{key}: one distribution per key, e.g. {{choice: [1, 2]}}")
            (kind, values), = spec.items()
            if kind not in SEARCH_KINDS:
                raise ValueError(f"search.{key}: unknown distribution {kind!r} "
                                 f"(known: {', '.join(SEARCH_KINDS)})")
            arity = SEARCH_KINDS[kind]
            if (arity is None and not values) or (arity is not None and len(values) != arity):
                raise ValueError(f"search.{key}.{kind}: expected "
                                 f"{'one or more values' if arity is None else f'{arity} values [lo, hi]'}, got {values}")
            if arity is not None:
                values = spec[kind] = [_number(v, f"search.{key}.{kind}") for v in values]
                if not values[0] < values[1]:
                    raise ValueError(f"search.{key}.{kind}: need lo < hi, got {values}")
            if kind == "loguniform" and not 0 < values[0]:
                raise ValueError(f"search.{key}.loguniform: need 0 < lo < hi, got {values}")
        better = EVAL_METRICS.get(self.metric)
        if self.metric.startswith("eval/") and better is None:
            raise ValueError(f"metric: unknown held-out score {self.metric!r} (known: {', '.join(EVAL_METRICS)})")
        if better is not None and self.mode != better:
            raise ValueError(f"mode: a {'higher' if better == 'max' else 'lower'} {self.metric} is better, "
                             f"so mode must be {better!r}, got {self.mode!r}")
        if self.num_samples < 1 or self.max_concurrent < 0:
            raise ValueError("num_samples must be >= 1 and max_concurrent >= 0")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ValueError("grace_period must be >= 1 and reduction_factor >= 2")


def _number(value: Any, where: str) -> float | int:
    """A bound of a numeric distribution. YAML 1.1 reads ``1e-4`` (no dot) as text: accept it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number") from None


@dataclass
class RootConfig(Config):
    """Every section of one YAML file: the trainer's (`data`, `model`, `train`, `checkpoint`,
    `tracking`) plus `cluster` and `sweep`."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RootConfig:
    """The resolved config: ``path`` (or the defaults) with dotted ``overrides`` applied, validated."""
    return load_config(RootConfig, path, overrides)
