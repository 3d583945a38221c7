"""Label inputs of `vid2vid generate`: folders (read with the model's label spec), label videos and
shards -> the model's input, frame by frame; the streamed video."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cluster.config import load
from cluster.generate import LabelInputError, colour_labels, encoded_frames, generate, open_labels, output_size
from cluster.video_model import VideoGenerator
from dataio.labels import LabelSpec

REPO = Path(__file__).resolve().parents[3]
SPEC = LabelSpec(8, has_edges=True)  # 8 classes + instance edges


@pytest.fixture(scope="module")
def model() -> VideoGenerator:
    from models.build import build_generator
    cfg = load(REPO / "configs" / "tiny_train.yaml")
    torch.manual_seed(0)
    return VideoGenerator(build_generator(cfg.model, 9), SPEC)


def sequence(tmp_path: Path, frames: int = 3, size: tuple[int, int] = (32, 64)) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("labels", "instances"):
        (tmp_path / "seq" / sub).mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(rng.integers(0, 8, size, dtype=np.uint8)).save(tmp_path / "seq" / "labels" / f"{t:06d}.png")
        Image.fromarray(np.full(size, t, np.uint8)).save(tmp_path / "seq" / "instances" / f"{t:06d}.png")
    return tmp_path / "seq"


def inputs(path: Path, labels: LabelSpec = SPEC, size: tuple[int, int] | None = None, divisor: int = 8
           ) -> tuple[torch.Tensor, np.ndarray]:
    source = open_labels(path, labels)
    frames = list(encoded_frames(source, labels, output_size(source, divisor, size)))
    return torch.stack([torch.from_numpy(p) for p, _ in frames]).unsqueeze(0), np.stack([ids for _, ids in frames])


def test_sequence_folder_with_instances(model: VideoGenerator, tmp_path: Path) -> None:
    source = open_labels(sequence(tmp_path), SPEC)
    assert (source.frames, source.height, source.width) == (3, 32, 64)
    tensor, ids = inputs(tmp_path / "seq")
    assert tensor.shape == (1, 3, 9, 32, 64)
    assert torch.equal(tensor[0, :, :8].argmax(1), torch.from_numpy(ids).long())
    assert tensor[0, :, 8].max() == 0  # each frame's instance map is one id: no boundary
    out = model(tensor)
    assert out.shape == (1, 3, 32, 64, 3) and out.dtype == torch.uint8


def test_the_model_is_the_generator_frame_by_frame(model: VideoGenerator, tmp_path: Path) -> None:
    from models.generator import generate_clip
    tensor, _ = inputs(sequence(tmp_path, frames=4))
    with torch.no_grad():
        expected = generate_clip(model.generator, tensor).images
    got = model(tensor).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    assert (got - expected.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6


def test_raw_maps_are_read_with_the_packing_label_map(tmp_path: Path) -> None:
    """A 0/255 mask folder, as packed with data.pack.label_map={255: 1}: generate reads the same maps."""
    (tmp_path / "masks").mkdir()
    mask = np.zeros((16, 24), np.uint8)
    mask[4:12, 6:18] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "00000.png")
    tensor, ids = inputs(tmp_path / "masks", LabelSpec(2, label_map=((255, 1),)), divisor=8)
    assert tensor.shape == (1, 1, 2, 16, 24) and np.array_equal(ids[0], mask // 255)
    # The model's classes and map are fixed: no config key to point a user at here.
    with pytest.raises(LabelInputError, match=r"masks/00000.png: label value 255 .*; the model knows 2 classes: "
                                              r"give maps of those$"):
        inputs(tmp_path / "masks", LabelSpec(2), divisor=8)


def test_label_video_and_resizing(tmp_path: Path) -> None:
    from dataio.video import encode_lossless
    ids = np.random.default_rng(1).integers(0, 8, (4, 36, 70), dtype=np.uint8)
    (tmp_path / "labels.webm").write_bytes(encode_lossless(ids))
    tensor, read = inputs(tmp_path / "labels.webm", LabelSpec(8))
    assert tensor.shape == (1, 4, 8, 32, 64)  # down to multiples of the model's 8
    assert np.array_equal(read[:, 0, 0], ids[:, 0, 0])
    assert inputs(tmp_path / "labels.webm", LabelSpec(8), size=(16, 24))[0].shape[-2:] == (16, 24)
    with pytest.raises(LabelInputError, match="multiples of 8"):
        output_size(open_labels(tmp_path / "labels.webm", LabelSpec(8)), 8, (20, 24))


def test_shard_sample(tmp_path: Path) -> None:
    from dataio import pack, synth
    cfg = load(REPO / "configs" / "tiny_train.yaml", [f"data.shards={tmp_path}/shards", f"data.synth.out={tmp_path}/s",
                                                       f"data.pack.source={tmp_path}/s", "data.synth.sequences=1"])
    synth.generate(cfg.data.synth)
    pack.pack(cfg.data, progress=False)
    tensor, ids = inputs(tmp_path / "shards" / "train-000000.tar")
    assert tensor.shape == (1, 4, 9, 32, 64) and tensor[0, :, 8].max() == 1.0  # instance edges from the shard
    assert colour_labels(ids[0], SPEC).shape == (32, 64, 3)


def test_bad_labels_name_the_file(tmp_path: Path) -> None:
    Image.fromarray(np.full((32, 64), 9, np.uint8)).save(tmp_path / "000000.png")
    with pytest.raises(LabelInputError, match=r"000000.png: label value 9 .* data.num_classes=8"):
        inputs(tmp_path)
    with pytest.raises(LabelInputError, match="no such file"):
        open_labels(tmp_path / "missing", SPEC)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LabelInputError, match="expected a folder"):
        open_labels(tmp_path / "notes.txt", SPEC)
    with pytest.raises(LabelInputError, match=r"notes.txt: not a PNG file"):  # as packing refuses it
        open_labels(tmp_path, SPEC)
    (tmp_path / "notes.txt").unlink()
    with pytest.raises(LabelInputError, match=r"64x32 is smaller than the 128 px"):
        output_size(open_labels(tmp_path, SPEC), 128, None)


def test_generate_streams_to_an_mp4(model: VideoGenerator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cluster.generate
    from dataio.video import decode
    monkeypatch.setattr(cluster.generate, "load_video_model", lambda uri, device: model)
    out = generate("any", sequence(tmp_path, frames=5), tmp_path / "out.mp4", side_by_side=True, progress=False)
    video = decode(out)
    assert video.shape == (5, 32, 128, 3)  # labels | generated


def test_what_systems_leave_in_a_folder_is_not_a_label_map(tmp_path: Path) -> None:
    folder = sequence(tmp_path)
    (folder / "labels" / "._000000.png").write_bytes(b"\x00\x05\x16\x07")  # macOS's resource fork
    (folder / "labels" / "Thumbs.db").write_bytes(b"x")
    (folder / "instances" / ".DS_Store").write_bytes(b"x")
    assert inputs(folder)[0].shape == (1, 3, 9, 32, 64)


def test_labels_without_the_models_instance_maps_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from trainer.samples import Mp4Writer
    folder = sequence(tmp_path)
    inputs(folder)
    assert not caplog.records
    inputs(folder / "labels")  # the maps without the sequence folder's instances/
    assert "no instance maps come with these labels" in caplog.text
    caplog.clear()
    # A label video as most tools write one (H.264, 4:2:0): lossy, so some ids come back as others.
    with Mp4Writer(tmp_path / "labels.mp4") as writer:
        for t in range(2):
            writer.write(np.repeat(np.full((32, 64, 1), t, np.uint8), 3, axis=2))
    inputs(tmp_path / "labels.mp4", LabelSpec(8))
    assert "h264 in yuv420p is most often lossy" in caplog.text


def test_a_failed_generate_leaves_no_video(model: VideoGenerator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cluster.generate
    monkeypatch.setattr(cluster.generate, "load_video_model", lambda uri, device: model)
    folder = sequence(tmp_path, frames=5)
    Image.fromarray(np.full((32, 64), 9, np.uint8)).save(folder / "labels" / "000003.png")
    with pytest.raises(LabelInputError, match="000003.png: label value 9"):
        generate("any", folder, tmp_path / "out" / "video.mp4", progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # no three-frame video that plays as the whole one
    monkeypatch.setattr(cluster.generate, "load_video_model", lambda uri, device: pytest.fail("loaded"))
    with pytest.raises(LabelInputError, match=r"--out .*video.avi: the video is written as an .mp4 file"):
        generate("any", folder, tmp_path / "video.avi", progress=False)


def test_model_uris_of_any_scheme_go_to_mlflow(model: VideoGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    import cluster.registry
    from cluster.registry import RegistryError, load_video_model
    seen = []
    monkeypatch.setattr(cluster.registry, "_load_logged_model", lambda uri, device: seen.append(uri) or model)
    uris = ["runs:/0123abcd/generator", "models:/vid2vid@champion", "s3://bucket/models/generator"]
    for uri in uris:
        assert load_video_model(uri, "cpu") is model
    assert seen == uris
    with pytest.raises(RegistryError, match="nowhere/generator.pt: no such file or folder, and not a model URI"):
        load_video_model("nowhere/generator.pt", "cpu")
