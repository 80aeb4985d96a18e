"""`make gpu-check` skips cleanly where there is no CUDA device (the GPU run itself is
prepared for a machine that has one)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check would run")
def test_gpu_check_skips_without_a_gpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "gpu-check skipped: no CUDA device" in proc.stdout
    assert "Traceback" not in proc.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "gpu-check" and "no CUDA device" in report["skipped"]
