"""The README's data commands, run as written (the installed `vid2vid` script, `configs/demo.yaml`, in a
fresh working folder): synth, pack, inspect; and pack from a source folder to S3, skipping a bad sequence."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
VID2VID = str(Path(sys.executable).with_name("vid2vid"))


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([VID2VID, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_synth_pack_and_inspect_as_the_readme_shows(tmp_path: Path) -> None:
    (tmp_path / "configs").symlink_to(REPO / "configs")
    synth = run(tmp_path, "data", "synth", "--config", "configs/demo.yaml")
    assert "wrote 8 sequences to data/demo/synth" in synth.stdout
    assert len(list((tmp_path / "data" / "demo" / "synth").glob("seq_*/frames/000023.png"))) == 8
    pack = run(tmp_path, "data", "pack", "--config", "configs/demo.yaml")
    assert (tmp_path / "data" / "demo" / "shards" / "manifest.parquet").is_file()
    shards = (tmp_path / "data" / "demo" / "shards").resolve()  # the report names where they went in full
    assert f"packed 16 clips of 8 sequences into {shards}:" in pack.stdout  # 2 clips of 16 per sequence
    shown = run(tmp_path, "data", "inspect", "--config", "configs/demo.yaml").stdout
    # demo.yaml: batches of 2 clips of 16 frames, at the packed 128x256, 8 classes + instance edges.
    assert "data/demo/shards [train]:" in shown and "8 classes" in shown
    assert "rgb       (2, 16, 3, 128, 256)" in shown
    assert "labels    (2, 16, 9, 128, 256)" in shown and "flow      (2, 16, 2, 128, 256)" in shown
    assert "loader stats: read " in shown and "skipped 0" in shown


def test_pack_from_a_source_to_s3_skipping_a_bad_sequence(tmp_path: Path, s3_endpoint: str) -> None:
    """`vid2vid data pack data.pack.source=my_videos/ data.shards=s3://bucket/prefix data.pack.skip_bad=true`,
    as written."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    run(tmp_path, "data", "synth", "--config", "configs/demo.yaml", "data.synth.sequences=3",
        "data.synth.out=my_videos")
    bad = tmp_path / "my_videos" / "seq_0002" / "labels" / "000005.png"
    Image.fromarray(np.full((128, 256), 200, np.uint8)).save(bad)  # class 200 of 8: a bad label map
    import s3fs
    s3fs.S3FileSystem().mkdir("bucket")
    packed = run(tmp_path, "data", "pack", "data.pack.source=my_videos/", "data.shards=s3://bucket/prefix",
                 "data.pack.skip_bad=true")
    assert "seq_0002" in packed.stdout
    fs = s3fs.S3FileSystem()
    names = {Path(p).name for p in fs.ls("bucket/prefix")}
    assert "manifest.parquet" in names and any(n.endswith(".tar") for n in names)
    report = json.loads(fs.cat("bucket/prefix/pack_report.json"))
    assert [entry["name"] for entry in report["skipped"]] == ["seq_0002"] and report["sequences"] == 2
    shutil.rmtree(tmp_path / "my_videos")
