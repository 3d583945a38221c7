"""A copy of a commit's tree, for the benchmarks that measure this tree against the code it replaced
(``op_count.py --against``, ``train_throughput.py --against``)."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export(rev: str, dest: Path) -> Path:
    """The files of commit ``rev`` under ``dest`` (``git archive``: tracked files only, no history)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest
