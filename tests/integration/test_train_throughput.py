"""benchmarks/train_throughput.py as documented, on a small data set: this tree and a commit (its own,
here: a clean clone's HEAD) train in turn, real trainer processes, and the ratio is printed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMALL = ["data.synth.sequences=4", "data.synth.frames=16", "data.pack.val_fraction=0.25"]


def test_this_tree_trains_against_a_commit_in_turns(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--against", "HEAD", "--budget-s", "3",
           "--rounds", "1", "--out", str(tmp_path / "data"), *SMALL]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 trees, 1 round(s) of 3 s each" in done.stdout
    runs = dict(re.findall(r"round 1, (this tree|HEAD): (\d+) steps", done.stdout))
    assert runs.keys() == {"this tree", "HEAD"} and all(int(n) > 0 for n in runs.values()), done.stdout
    ratio = re.search(r"this tree: \d+ steps \(runs \[(\d+)\]\) against HEAD: \d+ \(runs \[(\d+)\]\): ([\d.]+)x the "
                      r"steps in 3 s", done.stdout)
    assert ratio and ratio.groups()[:2] == (runs["this tree"], runs["HEAD"]), done.stdout
    assert abs(float(ratio.group(3)) - int(runs["this tree"]) / int(runs["HEAD"])) <= 0.005
    assert (tmp_path / "data" / "shards" / "manifest.parquet").is_file()  # the data is kept for the next call
