"""Label inputs of `vid2vid generate`: folders, label videos and shards -> the model's tensor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cluster.config import load
from cluster.generate import LabelInputError, colour_labels, label_tensor, read_labels
from cluster.video_model import VideoGenerator

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def model() -> VideoGenerator:
    from models.build import build_generator
    cfg = load(REPO / "configs" / "tiny_train.yaml")
    torch.manual_seed(0)
    return VideoGenerator(build_generator(cfg.model, 9), num_classes=8)  # 8 classes + instance edges


def sequence(tmp_path: Path, frames: int = 3, size: tuple[int, int] = (32, 64)) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("labels", "instances"):
        (tmp_path / "seq" / sub).mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(rng.integers(0, 8, size, dtype=np.uint8)).save(tmp_path / "seq" / "labels" / f"{t:06d}.png")
        Image.fromarray(np.full(size, t, np.uint8)).save(tmp_path / "seq" / "instances" / f"{t:06d}.png")
    return tmp_path / "seq"


def test_sequence_folder_with_instances(model: VideoGenerator, tmp_path: Path) -> None:
    clip = read_labels(sequence(tmp_path), "classes")
    assert clip.ids.shape == (3, 32, 64) and clip.edges is not None
    tensor = label_tensor(clip, model)
    assert tensor.shape == (1, 3, 9, 32, 64)
    assert torch.equal(tensor[0, :, :8].argmax(1), torch.from_numpy(clip.ids).long())
    out = model(tensor)
    assert out.shape == (1, 3, 32, 64, 3) and out.dtype == torch.uint8


def test_the_model_is_the_generator_frame_by_frame(model: VideoGenerator, tmp_path: Path) -> None:
    from models.generator import generate_clip
    tensor = label_tensor(read_labels(sequence(tmp_path, frames=4), "classes"), model)
    with torch.no_grad():
        expected = generate_clip(model.generator, tensor).images
    got = model(tensor).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    assert (got - expected.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6


def test_label_video_and_resizing(model: VideoGenerator, tmp_path: Path) -> None:
    from dataio.video import encode_lossless
    ids = np.random.default_rng(1).integers(0, 8, (4, 36, 70), dtype=np.uint8)
    (tmp_path / "labels.webm").write_bytes(encode_lossless(ids))
    clip = read_labels(tmp_path / "labels.webm", "classes")
    assert np.array_equal(clip.ids, ids) and clip.edges is None
    assert label_tensor(clip, model).shape[-2:] == (32, 64)  # down to multiples of the model's 8
    assert label_tensor(clip, model, (16, 24)).shape[-2:] == (16, 24)
    with pytest.raises(LabelInputError, match="multiples of 8"):
        label_tensor(clip, model, (20, 24))


def test_shard_sample(model: VideoGenerator, tmp_path: Path) -> None:
    from dataio import pack, synth
    cfg = load(REPO / "configs" / "tiny_train.yaml", [f"data.shards={tmp_path}/shards", f"data.synth.out={tmp_path}/s",
                                                       f"data.pack.source={tmp_path}/s", "data.synth.sequences=1"])
    synth.generate(cfg.data.synth)
    pack.pack(cfg.data, progress=False)
    clip = read_labels(tmp_path / "shards" / "train-000000.tar", "classes")
    assert clip.ids.shape == (4, 32, 64) and clip.edges is not None and clip.edges.max() == 255
    assert colour_labels(label_tensor(clip, model)[0]).shape == (4, 32, 64, 3)


def test_bad_labels_name_the_file(model: VideoGenerator, tmp_path: Path) -> None:
    Image.fromarray(np.full((32, 64), 9, np.uint8)).save(tmp_path / "000000.png")
    with pytest.raises(LabelInputError, match=r"class id 9 .* 8 classes"):
        label_tensor(read_labels(tmp_path, "classes"), model)
    with pytest.raises(LabelInputError, match="no such file"):
        read_labels(tmp_path / "missing", "classes")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LabelInputError, match="expected a folder"):
        read_labels(tmp_path / "notes.txt", "classes")


def test_model_uris_of_any_scheme_go_to_mlflow(model: VideoGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.pytorch

    from cluster.registry import RegistryError, load_video_model
    seen = []
    monkeypatch.setattr(mlflow.pytorch, "load_model", lambda uri, map_location: seen.append(uri) or model)
    uris = ["runs:/0123abcd/generator", "models:/vid2vid@champion", "s3://bucket/models/generator"]
    for uri in uris:
        assert load_video_model(uri, "cpu") is model
    assert seen == uris
    with pytest.raises(RegistryError, match="nowhere/generator.pt: no such file or folder, and not a model URI"):
        load_video_model("nowhere/generator.pt", "cpu")
