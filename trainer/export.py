"""The trained generator as one plain file: consolidated fp32 weights plus the config that builds it.

Loads with ``torch.load(weights_only=True)`` on one process without DeepSpeed, so the cluster layer can
register it and ``generate`` can run it anywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dataio.labels import LabelSpec
from dataio.storage import AtomicFile
from trainer import distributed as dist
from trainer.average import averaged_state
from trainer.checkpoint import load_trainer_state
from trainer.config_tree import to_dict
from trainer.engines import TAG, check_pickled_classes

if TYPE_CHECKING:
    from trainer.config import Config

FORMAT = "vid2vid-generator/1"


def export_path(checkpoint_dir: str | Path) -> Path:
    """Where a run's export lives: beside its checkpoints, ``<checkpoint.dir>/export/generator.pt``."""
    return Path(checkpoint_dir) / "export" / "generator.pt"


def consolidated_generator_state(checkpoint: str | Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 generator weights from a checkpoint folder (any ZeRO stage, any rank count).

    ZeRO 1-3 keep the fp32 master weights partitioned across the ranks' optimizer files: DeepSpeed's
    ``zero_to_fp32`` merges them. Stage 0 has the whole module in its model-states file.
    """
    folder = Path(checkpoint) / "generator"
    check_pickled_classes(folder)
    if zero_stage == 0:
        states = torch.load(folder / TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
        return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=TAG)
    return {k: v.detach().float().contiguous() for k, v in state.items()}


def export_generator(checkpoint: str | Path, out: str | Path, *, zero_stage: int, model_config: dict[str, Any],
                     labels: LabelSpec, active_scales: int) -> Path:
    """Write ``out`` (atomically) from the checkpoint folder ``checkpoint``; returns ``out``. ``labels``
    (how the training data's label maps are read) goes with it, so generation reads maps the same way."""
    out = Path(out)
    # The weights' running average when the run kept one (trainer/average.py): what was evaluated.
    state = averaged_state(checkpoint)
    if state is None:
        state = consolidated_generator_state(checkpoint, zero_stage)
    payload = {"format": FORMAT, "state_dict": state,
               "model": model_config, "label_channels": labels.channels, "labels": labels.to_dict(),
               "active_scales": active_scales}
    with AtomicFile(out) as temp:
        torch.save(payload, temp)
    return out


def export_run(cfg: Config, folder: Path | None, labels: LabelSpec) -> Path | None:
    """Export checkpoint ``folder`` of a run to ``export_path`` (rank 0 writes, every rank waits)."""
    if folder is None:
        return None
    out = export_path(cfg.checkpoint.dir)
    if dist.is_main():
        # The scales of the checkpoint's stage, not the live model's: the last save may predate a
        # stage change (saves are skipped after a non-finite step).
        active_scales = load_trainer_state(folder)["stage"]["scale"] + 1
        export_generator(folder, out, zero_stage=cfg.train.generator.zero_stage, model_config=to_dict(cfg.model),
                         labels=labels, active_scales=active_scales)
    dist.barrier()
    return out


def load_generator(path: str | Path):
    """The exported generator as a ready ``models.generator.Generator`` in eval mode."""
    return load_export(path)[0]


def load_export(path: str | Path) -> tuple[Any, LabelSpec | None]:
    """The exported generator (eval mode) and its ``LabelSpec`` (None in exports made before it was
    stored: the caller rebuilds it from the run's config)."""
    return generator_from(torch.load(path, map_location="cpu", weights_only=True), str(path))


def split_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An export's weights and the rest of it (format, model config, label spec, scales): plain JSON
    types, stored beside the weights by the registered model (``cluster/pyfunc_model.py``)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload.pop("state_dict")
    return state, payload


def generator_from(payload: dict[str, Any], where: str) -> tuple[Any, LabelSpec | None]:
    """Build and load the generator an export's ``payload`` describes (``where`` names it in errors)."""
    from models.build import build_generator
    from models.config import ModelConfig
    from trainer.config_tree import from_dict

    if payload.get("format") != FORMAT:
        raise ValueError(f"{where}: not a vid2vid generator export (format {payload.get('format')!r})")
    model = payload["model"]
    # Exports made before the flow prior and the first-frame choice existed were trained without the
    # prior (its default is on) and with the shared first-frame path.
    model.setdefault("generator", {}).setdefault("flow_prior", "none")
    model["generator"].setdefault("first_frame", "shared")
    generator = build_generator(from_dict(ModelConfig, model, where, "model."), payload["label_channels"])
    generator.set_active_scales(payload["active_scales"])
    generator.load_state_dict(payload["state_dict"])
    labels = LabelSpec.from_dict(payload["labels"]) if "labels" in payload else None
    return generator.eval(), labels
