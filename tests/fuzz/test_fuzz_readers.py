"""Seeded, bounded fuzzing of every reader: each mutated file must convert to a valid model
(``onnx.checker`` + ONNX Runtime load) or fail with one clean ``PortanetError`` line and no
output file. A larger campaign: ``python -m tests.fuzz.campaign 1000 <seed>``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import campaign

#: cases per target: about a minute in all on two loaded cores (torch and Keras cases are slow)
CASES = {
    "caffe-prototxt": 40, "caffe-caffemodel": 40, "mxnet-json": 50, "mxnet-params": 50, "cntk": 30,
    "onnx": 40, "onnx-external": 30, "onnx-external-data": 20, "keras": 10, "keras-h5": 12,
    "pt2": 4, "torchscript": 3,
}
SEED = 0


@pytest.mark.parametrize("name", list(CASES))
def test_reader_fuzz(name):
    bugs: list[str] = []
    counts = campaign.run_target(campaign.TARGETS[name], CASES[name], SEED,
                                 on_bug=lambda case, res: bugs.append(f"case {case}: {res}"))
    assert not bugs, f"{len(bugs)} of {CASES[name]} cases ended badly:\n" + "\n".join(bugs)
    # the mutations reach the readers: both ends occur (a fuzzer that only hits the decoder, or
    # never breaks the file, tests nothing)
    assert counts["error"] > 0, counts
    assert counts["ok"] + counts["error"] == CASES[name]


@pytest.mark.parametrize("name,case", [("caffe-caffemodel", 3), ("mxnet-params", 2)])
def test_cli_sample(tmp_path, name, case):
    """A sample through the console script: exit 0 with the file, or exit 2 with one line."""
    target = campaign.TARGETS[name]
    paths = campaign.make_case(target, SEED, case, tmp_path)
    out = tmp_path / "o.onnx"
    args = [str(p) for p in paths] + ["-o", str(out)]
    for k, v in target.options.get("input_shapes", {}).items():
        args += ["--input-shape", f"{k}={'x'.join(map(str, v))}" if k else "x".join(map(str, v))]
    exe = Path(sys.executable).with_name("portanet")
    proc = subprocess.run([str(exe), "convert", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
        assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert not out.exists()
    else:
        assert out.exists()
