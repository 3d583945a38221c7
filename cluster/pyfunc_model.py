"""The registered generator as an MLflow "model from code": no pickle anywhere.

MLflow runs this file to build the model (``mlflow.pyfunc.log_model(python_model=<this file>)``), so
what the registry holds is data: ``weights.pt`` (the generator's state dict, read with
``torch.load(weights_only=True)``) and ``generator.json`` (export format, model config, label spec,
active scales), plus our code (``code_paths``). ``mlflow.pyfunc.load_model(uri).predict(labels)``:
float32 [B, T, C, H, W] label video in (one-hot classes, then the instance-edge channel when the model
has one), uint8 [B, T, H, W, 3] RGB out, frame by frame with ``cluster.video_model.VideoGenerator``
(the loop ``vid2vid generate`` runs), on a GPU when there is one. It loads with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from cluster.video_model import CONFIG_ARTIFACT, WEIGHTS_ARTIFACT, VideoGenerator, pick_device
from trainer.export import generator_from


class VideoGeneratorModel(PythonModel):
    def load_context(self, context: Any) -> None:
        description = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text())
        state = torch.load(context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=True)
        generator, labels = generator_from({**description, "state_dict": state}, context.artifacts[WEIGHTS_ARTIFACT])
        self.video = VideoGenerator(generator, labels).to(pick_device()).eval()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        labels = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        return self.video(labels).cpu().numpy()


mlflow.models.set_model(VideoGeneratorModel())
