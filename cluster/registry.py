"""The MLflow model registry: publish a trained generator, list models, fetch one with its run's files.

A published version is an MLflow "model from code" (``cluster/pyfunc_model.py``: the generator's
weights as a plain state dict and its description as JSON, no pickle) logged into the training run (so
the run's sample videos and config sit beside it), registered under a name and pointed at by an alias
(``champion``). Versions published before were pickles of ``VideoGenerator`` (MLflow's PyTorch
flavour): they still load, with a warning that says how to republish.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import get_model_info
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from cluster.video_model import CONFIG_ARTIFACT, WEIGHTS_ARTIFACT, VideoGenerator
from dataio.errors import UserInputError
from dataio.labels import LabelSpec
from dataio.reader import layout, list_shards, manifest_or_none
from trainer import checkpoint as checkpoints
from trainer.checkpoint import TRAINER_FILE, latest_checkpoint, load_trainer_state
from trainer.config import EVAL_METRICS
from trainer.export import export_generator, export_path, load_export, split_export
from trainer.tracking import configure_client, redact, redacted_yaml

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "generator"
"""Artifact name of the logged model inside its run."""
PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
"""MLflow's switch for unpickling models: only versions published before models from code need it."""
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
_ANY_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
"""An MLflow model URI of any scheme: models:/, runs:/, s3://, file:/ ..."""


class RegistryError(UserInputError, ValueError):
    """A model, run or checkpoint that cannot be published or fetched; the message names it."""


@dataclass
class Published:
    name: str
    version: str
    alias: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


@dataclass
class Source:
    """What a publish needs: the exported generator file, the resolved config, the run to log into."""
    export: Path
    config: dict[str, Any]
    run_id: str
    """'' when no run of this tracking store is known: a new run is created."""


def parse_models_uri(uri: str) -> tuple[str, str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    match = _MODELS_URI.match(uri)
    if not match:
        raise RegistryError(f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return match["name"], match["alias"] or "", match["version"] or ""


def source_from_run(client, run_id: str, workdir: Path) -> Source:
    """The export and config that ``vid2vid train`` logged to run ``run_id`` (``cluster.worker``)."""
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise RegistryError(f"run {run_id}: not found in the tracking store ({err.error_code})") from None
    try:
        export = Path(client.download_artifacts(run_id, "export/generator.pt", str(workdir)))
    except (MlflowException, OSError):
        # A run trained by the trainer alone (torchrun) has only a tag with the export's path.
        export = Path(run.data.tags.get("export", ""))
        if not run.data.tags.get("export") or not export.is_file():
            raise RegistryError(f"run {run_id} has no exported generator (no artifact export/generator.pt, "
                                f"and its 'export' tag {run.data.tags.get('export')!r} is not a file here)") from None
    try:
        config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(workdir))).read_text())
    except (MlflowException, OSError):
        config = _config_from_params(run.data.params)
    return Source(export, config, run_id)


def source_from_checkpoint(path: Path, workdir: Path) -> Source:
    """An exported ``generator.pt``; a run's checkpoint folder (its ``export/generator.pt``); or one
    ``step-*`` checkpoint, exported here."""
    path = Path(path)
    if path.is_file():
        # An export knows its label channels, not how many are classes: that is in the run's config,
        # in the checkpoints beside it (``<dir>/export/generator.pt``).
        beside = latest_checkpoint(path.parent.parent) if path.parent.name == "export" else None
        if beside is None:
            raise RegistryError(f"checkpoint {path}: an export without its checkpoint folder beside it; "
                                "publish the checkpoint folder (it holds the config) instead")
        state = load_trainer_state(beside)
        return Source(path, state["config"], state["progress"].get("run_id", ""))
    if not path.is_dir():
        raise RegistryError(f"checkpoint {path}: no such file or folder")
    step = path if (path / TRAINER_FILE).is_file() else latest_checkpoint(path)
    if step is None:
        raise RegistryError(f"checkpoint {path}: neither a checkpoint ({TRAINER_FILE}) nor a folder of them")
    state = load_trainer_state(step)
    config, run_id = state["config"], state["progress"].get("run_id", "")
    export = export_path(step.parent)
    if step != latest_checkpoint(step.parent) or not export.is_file():
        export = _export_step(step, state, workdir)
    return Source(export, config, run_id)


def _export_step(step: Path, state: dict[str, Any], workdir: Path) -> Path:
    """Consolidate one checkpoint's generator (any ZeRO stage) into an export file."""
    config = state["config"]
    shards = config["data"]["shards"]
    # Label channels are a property of the data (classes, plus edges when the shards carry them).
    manifest = manifest_or_none(shards)
    found = layout(shards, "train", list_shards(shards, "train", manifest), manifest)
    labels = dataclasses.replace(LabelSpec.from_data(config["data"], found.has_edges), kind=found.label_kind)
    return export_generator(step, workdir / "generator.pt", zero_stage=config["train"]["generator"]["zero_stage"],
                            model_config=config["model"], labels=labels,
                            active_scales=state["stage"]["scale"] + 1)


def load_video_model(model: str, device: str):
    """The ``VideoGenerator`` of a local checkpoint (an exported ``generator.pt`` in its checkpoint
    folder, a run's checkpoint folder or one ``step-*`` folder) or of an MLflow model URI, on ``device``."""
    path = Path(model)
    if path.exists():
        with tempfile.TemporaryDirectory(prefix="vid2vid-load-") as tmp:
            source = source_from_checkpoint(path, Path(tmp))
            return video_model(source.export, source.config).to(device).eval()
    if not _ANY_URI.match(model):
        raise RegistryError(f"model {model}: no such file or folder, and not a model URI "
                            "(models:/NAME@ALIAS, runs:/RUN_ID/generator, ...)")
    return _load_logged_model(model, device)


def _load_logged_model(uri: str, device: str):
    """A published model's ``VideoGenerator``: from a model from code without any unpickling; from
    an older pickled version (PyTorch flavour) with a warning."""
    if "pytorch" not in get_model_info(uri).flavors:
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().video.to(device).eval()


    log.warning("%s was published as a pickle (before models from code): loading it runs code from the "
                "registry; republish it pickle-free with: vid2vid model publish --run RUN_ID --name NAME", uri)
    os.environ.setdefault(PICKLE_ENV, "true")
    return mlflow.pytorch.load_model(uri, map_location=device).to(device).eval()


def video_model(export: Path, config: dict[str, Any]):
    """The export as a ``VideoGenerator`` with the label spec stored in it (an older export without
    one: rebuilt from the run's data config, the edge channel inferred from the channel count)."""
    generator, labels = load_export(export)
    if labels is None:
        spec = LabelSpec.from_data(config.get("data", {}), has_edges=False)
        base = 3 if spec.kind == "rgb" else spec.num_classes
        labels = dataclasses.replace(spec, has_edges=generator.label_channels > base)
    return VideoGenerator(generator, labels)


def publish(tracking_uri: str, name: str, alias: str = "champion", *, run_id: str | None = None,
            checkpoint: str | Path | None = None, experiment: str = "vid2vid", best: str = "",
            tags: dict[str, Any] | None = None) -> Published:
    """Log the generator of ``run_id`` (or ``checkpoint``) as an MLflow model, register it, alias it.

    ``best``: an ``eval/*`` score; the run's (or checkpoint folder's) kept checkpoint with the best
    recorded value of it is published instead of the last. ``tags`` (and, with ``best``, that
    checkpoint's scores and step) go on the registered version: why it is the champion.
    """
    if (run_id is None) == (checkpoint is None):
        raise RegistryError("publish needs exactly one of a run id or a checkpoint path")
    configure_client()
    client = MlflowClient(tracking_uri=tracking_uri)
    tags = dict(tags or {})
    if best:
        folder = Path(checkpoint) if checkpoint is not None else _checkpoint_folder_of(client, run_id)
        checkpoint, scores = best_checkpoint(folder, best)
        run_id = None
        tags.update({**scores, "step": scores.get("eval/step", ""), "checkpoint": str(checkpoint)})
    with tempfile.TemporaryDirectory(prefix="vid2vid-publish-") as tmp:
        source = (source_from_run(client, run_id, Path(tmp)) if run_id is not None
                  else source_from_checkpoint(Path(checkpoint), Path(tmp)))
        if source.run_id and not _run_exists(client, source.run_id):
            log.warning("run %s of the checkpoint is not in %s: logging to a new run", source.run_id,
                        redact("uri", tracking_uri))
            source.run_id = ""
        model = video_model(source.export, source.config)
        signature, example = _signature(model)
        mlflow.set_tracking_uri(tracking_uri)
        if not source.run_id:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            source.run_id = client.create_run(experiment_id, run_name=f"publish-{name}").info.run_id
            if source.config:
                client.log_text(source.run_id, redacted_yaml(source.config), "config.yaml")
            client.set_terminated(source.run_id)
        artifacts = _model_files(source.export, model, Path(tmp))
        with mlflow.start_run(run_id=source.run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME, python_model=str(REPO / "cluster" / "pyfunc_model.py"), artifacts=artifacts,
                signature=signature, input_example=example, registered_model_name=name,
                code_paths=[str(REPO / package) for package in ("cluster", "models", "dataio", "trainer")],
                pip_requirements=_requirements(),
                metadata={"labels": model.labels.to_dict(), "num_classes": model.num_classes,
                          "label_kind": model.label_kind, "label_channels": model.label_channels,
                          "has_edges": model.has_edges, "size_multiple": model.divisor})
    version = str(info.registered_model_version)
    for key, value in tags.items():
        if key != "eval/step":
            client.set_model_version_tag(name, version, key, _fmt(value))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return Published(name, version, alias, source.run_id)


def _model_files(export: Path, model, folder: Path) -> dict[str, str]:
    """``weights.pt`` (the state dict) and ``generator.json`` (the rest of the export, with the label
    spec the model was built with) for ``cluster/pyfunc_model.py``."""
    state, description = split_export(export)
    description["labels"] = model.labels.to_dict()  # an older export's, rebuilt from the run's config
    torch.save(state, folder / "weights.pt")
    (folder / "generator.json").write_text(json.dumps(description, indent=1))
    return {WEIGHTS_ARTIFACT: str(folder / "weights.pt"), CONFIG_ARTIFACT: str(folder / "generator.json")}


def best_checkpoint(folder: Path, metric: str) -> tuple[Path, dict[str, float]]:
    """The kept checkpoint of run folder ``folder`` with the best recorded ``metric``, and its scores."""
    if metric not in EVAL_METRICS:
        raise RegistryError(f"--best {metric}: not a held-out score (known: {', '.join(EVAL_METRICS)})")
    found = checkpoints.best_checkpoint(folder, metric)
    if found is None:
        raise RegistryError(f"checkpoint folder {folder}: no checkpoint records its own {metric} "
                            "(train with eval.at_checkpoint: true)")
    return found


def _checkpoint_folder_of(client, run_id: str) -> Path:
    """The checkpoint folder of a run: its ``checkpoint`` tag names the last checkpoint saved."""
    try:
        tag = client.get_run(run_id).data.tags.get("checkpoint", "")
    except MlflowException as err:
        raise RegistryError(f"run {run_id}: not found in the tracking store ({err.error_code})") from None
    if not tag or not Path(tag).parent.is_dir():
        raise RegistryError(f"run {run_id}: its checkpoint folder ({tag or 'no checkpoint tag'}) is not on this "
                            "machine; publish with --checkpoint FOLDER --best METRIC")
    return Path(tag).parent


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _signature(model) -> tuple[Any, Any]:
    """-1 on batch, frames, height and width; the example is the smallest clip the model takes."""
    # Twice the size multiple: at the multiple itself the bottleneck is 1x1, where instance norm fails.
    channels, side = model.label_channels, 2 * model.divisor
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, channels, -1, -1))])
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1, 3))])
    example = np.zeros((1, 2, channels, side, side), np.float32)
    example[:, :, 0] = 1.0  # every pixel class 0
    return ModelSignature(inputs=inputs, outputs=outputs), example


def _requirements() -> list[str]:
    """Pinned as installed here (explicit requirements also save MLflow 8-25 s of inference)."""
    torch_version = package_version("torch").split("+")[0]
    # opencv: the flow prior (models/label_flow.py) runs DIS optical flow on the label maps.
    return [f"torch=={torch_version}"] + [f"{name}=={package_version(name)}" for name in
                                           ("numpy", "mlflow", "opencv-python-headless", "pyyaml")]


def _run_exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        return False


def _config_from_params(params: dict[str, str]) -> dict[str, Any]:
    """The data section rebuilt from a run's params (runs without a config.yaml artifact)."""
    data: dict[str, Any] = {}
    for key in ("num_classes",):
        if f"data.{key}" in params:
            data[key] = yaml.safe_load(params[f"data.{key}"])
    pack = {key: yaml.safe_load(params[f"data.pack.{key}"]) for key in ("label_kind", "label_map")
            if f"data.pack.{key}" in params}
    if pack:
        data["pack"] = pack
    return {"data": data}


@dataclass
class ModelRow:
    name: str
    version: str
    aliases: list[str]
    run_id: str
    created: str
    scores: dict[str, str] = dataclasses.field(default_factory=dict)
    """The version's ``eval/*`` tags: the held-out scores it was chosen by."""


def list_models(tracking_uri: str) -> list[ModelRow]:
    """Every version of every registered model, newest first within a model."""
    configure_client()
    client = MlflowClient(tracking_uri=tracking_uri)
    rows = []
    for model in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        for version in sorted(client.search_model_versions(f"name='{model.name}'"),
                              key=lambda v: int(v.version), reverse=True):
            created = datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc)
            scores = {k: v for k, v in (version.tags or {}).items() if k.startswith("eval/")}
            rows.append(ModelRow(model.name, str(version.version), sorted(aliases.get(str(version.version), [])),
                                 version.run_id or "", created.strftime("%Y-%m-%d %H:%M"), scores))
    return rows


def format_models(rows: list[ModelRow]) -> str:
    if not rows:
        return "no registered models"
    header = ("NAME", "VERSION", "ALIASES", "RUN", "CREATED (UTC)", "HELD-OUT SCORES")
    table = [header] + [(r.name, r.version, ",".join(r.aliases) or "-", r.run_id or "-", r.created,
                         " ".join(f"{k.removeprefix('eval/')}={v}" for k, v in sorted(r.scores.items())) or "-")
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


@dataclass
class Fetched:
    model: Path
    samples: list[Path]
    config: Path | None
    run_id: str
    version: str


def fetch(tracking_uri: str, uri: str, dest: str | Path) -> Fetched:
    """``models:/NAME@ALIAS`` into ``dest/model``, with its run's ``samples/`` and ``config.yaml``."""
    configure_client()
    name, alias, version = parse_models_uri(uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as err:
        raise RegistryError(f"{uri}: not in the registry at {redact('uri', tracking_uri)} ({err.error_code})") from None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    model = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{found.version}",
                                                     dst_path=str(dest / "model")))
    samples: list[Path] = []
    config = None
    if found.run_id:
        names = {a.path for a in client.list_artifacts(found.run_id)}
        if "samples" in names:
            folder = Path(client.download_artifacts(found.run_id, "samples", str(dest)))
            samples = sorted(folder.glob("*.mp4"))
        if "config.yaml" in names:
            config = Path(client.download_artifacts(found.run_id, "config.yaml", str(dest)))
    return Fetched(model, samples, config, found.run_id or "", str(found.version))
