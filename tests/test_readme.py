"""The README's commands, run exactly as written: a README block that stops working fails here.

Every fenced ``sh`` block and every ``$ portanet ...`` line of a transcript block is extracted
from README.md and run, in order, in one folder that holds the files the README names
(``deploy.prototxt``/``net.caffemodel`` = the zoo's Caffe LeNet, ``model.keras`` = the Keras
case-study CNN, ``resnet18.pt2`` = the zoo's ResNet-18, ``resnet-symbol.json`` = an MXNet
Gluon ResNet-18 export, ``mnist/`` = the embedded digits, ...). ``python`` blocks run too.

A block may be preceded by a directive comment that the rendered README does not show:
``<!-- readme-test: skip: REASON -->``, ``<!-- readme-test: exit 3 -->`` (the status the block's
commands must end with) or ``<!-- readme-test: prelude: CODE -->`` (Python run before a python
block: it defines what the snippet takes as given, such as the user's own ``MyNet``). Lines that
are not portanet commands (``make demo``, ``torchrun`` across machines, CUDA runs) must match
``NOT_RUN`` below, which says why each is not run here; any other line fails the test, so a new
kind of README line needs a decision.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from portanet.cli import cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: README lines that are not run here, and why (matched as regular expressions)
NOT_RUN: dict[str, str] = {
    r"^make (demo|test)\b": "the repository's own entry points (make test runs this suite; make demo is "
                             "tests/test_case_study.py's subject)",
    r"^torchrun --nnodes": "needs several machines",
    r"^torchrun --standalone": "starts the same two workers as `portanet train --nproc 2` above; torchrun "
                               "itself runs in tests/runtime/test_trainer_distributed.py",
    r"--device cuda\b": "needs CUDA devices (none on this machine; see the gpu-marked tests)",
}

_BLOCK = re.compile(
    r"^(?:<!-- readme-test: (?P<directive>.*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)^```", re.S | re.M)


@dataclass
class Block:
    line: int
    lang: str
    body: str
    directive: str

    @property
    def id(self) -> str:
        return f"{self.lang or 'text'}@L{self.line}"

    def commands(self) -> list[str]:
        """The portanet command lines (continuations joined, comments dropped)."""
        text = self.body.replace("\\\n", " ")
        cmds = []
        for raw in text.splitlines():
            line = raw.strip()
            if self.lang != "sh":  # a transcript: only its "$ " lines are commands
                if not line.startswith("$ "):
                    continue
            line = line.removeprefix("$ ").strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line, comments=True)
            if not words:
                continue
            cmds.append(shlex.join(words))
        return cmds


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("lang")) + 1
        blocks.append(Block(line, m.group("lang"), m.group("body"), (m.group("directive") or "").strip()))
    return blocks


def not_run_reason(cmd: str) -> str | None:
    for pattern, why in NOT_RUN.items():
        if re.search(pattern, cmd):
            return why
    return None


def _runnable(block: Block) -> bool:
    if block.lang == "python":
        return True
    return bool(block.commands())


BLOCKS = [b for b in readme_blocks() if _runnable(b)]


# ------------------------------------------------------------------------------- the folder
def _mnist_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    from portanet.data import load_data

    ds = load_data(None)
    return np.asarray(ds.train.x[:n]), np.asarray(ds.train.y[:n])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the README's commands name, made from the model zoo."""
    import onnx_ir
    import torch

    import portanet
    from model_zoo.caffe.writer import build as caffe_build
    from model_zoo.pytorch.models import save_pt2

    ws = tmp_path_factory.mktemp("readme")
    prototxt, caffemodel = caffe_build("lenet")
    shutil.copy(prototxt, ws / "deploy.prototxt")
    shutil.copy(caffemodel, ws / "net.caffemodel")
    portanet.save(portanet.convert(str(ws / "deploy.prototxt"), str(ws / "net.caffemodel")), ws / "net.onnx")
    shutil.copy(ws / "net.onnx", ws / "old.onnx")
    data_dir = REPO / "portanet" / "data" / "mnist-10k"
    for name in ("mnist", "fashion-mnist"):  # same IDX layout; the README's names for any such folder
        shutil.copytree(data_dir, ws / name)
    x, y = _mnist_arrays(2000)
    np.savez(ws / "digits.npz", x=x, y=y)
    digit = (x[:1].astype(np.float32) / 255.0).reshape(1, 1, 28, 28)
    np.save(ws / "x.npy", digit)
    np.save(ws / "digit.npy", digit)
    shutil.copy(REPO / "tests" / "converters" / "cntk" / "data" / "mnist_conv.cmf", ws / "mnist_conv.cmf")

    # PyTorch: the zoo's ResNet-18 as .pt2, state dict (+ the user's package), whole pickle, TorchScript
    shutil.copy(save_pt2("resnet18"), ws / "resnet18.pt2")
    pkg = ws / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})  # the README's user package re-exports the zoo's ResNet-18\n"
        "from model_zoo.pytorch.models import ResNet18  # noqa: E402,F401\n")
    sys.path.insert(0, str(ws))
    try:
        from mypkg.models import ResNet18

        torch.manual_seed(0)
        net = ResNet18().eval()
        torch.save(net.state_dict(), ws / "weights.pth")
        torch.save(net, ws / "whole_model.pt")
        torch.jit.trace(net, torch.randn(1, 3, 64, 64)).save(str(ws / "scripted.pt"))
        broken = portanet.convert(str(ws / "resnet18.pt2"))
        w = broken.graph.initializers["layer2.0.conv1.weight"]
        w.const_value = onnx_ir.tensor(w.const_value.numpy() * 1.5, name=w.name)  # a planted fault
        portanet.save(broken, ws / "broken.onnx")
    finally:
        sys.path.remove(str(ws))
        for mod in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
            del sys.modules[mod]

    # a Caffe net with a layer type of the user's (the README's plugin example): LeNet + AddOne
    (ws / "net.prototxt").write_text(prototxt.read_text().replace(
        'layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }',
        'layer { name: "shift" type: "AddOne" bottom: "ip2" top: "shift" }'))
    (ws / "my_layers.py").write_text(_python_block_after("### Your own layers: plugins"))
    _keras_user_files(ws)

    # Keras: the case-study CNN as .keras and as a SavedModel
    from model_zoo.keras.models import build as keras_build
    from model_zoo.keras.models import save_model

    shutil.copy(save_model("case_study_cnn"), ws / "model.keras")
    keras_build("case_study_cnn").export(str(ws / "saved_model_dir"), verbose=False)

    # MXNet: a Gluon ResNet-18 export (real mxnet 1.9.1 built it), at two epochs and a loose .params
    from model_zoo import mxnet as mxzoo

    if mxzoo.mxnet_python() is not None:
        refs = mxzoo.build()
        shutil.copy(refs / "resnet18_v1-symbol.json", ws / "resnet-symbol.json")
        for name in ("resnet-0000.params", "resnet-0010.params", "other.params"):
            shutil.copy(refs / "resnet18_v1-0000.params", ws / name)
        for name in ("resnet50_v2-symbol.json", "resnet50_v2-0000.params"):  # the float64 arbitration example
            shutil.copy(refs / name, ws / name)
    return ws


_USER_MODULES = {
    "layers.py": """\
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="my_pkg")
class Gate(keras.layers.Layer):
    def build(self, shape):
        self.g = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="g")

    def call(self, x):
        return x * ops.sigmoid(self.g)
""",
    "models.py": """\
import keras
from keras import ops

from my_pkg.layers import Gate


@keras.saving.register_keras_serializable(package="my_pkg")
class Net(keras.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")
        self.gate = Gate(name="gate")

    def call(self, x):
        return ops.mean(self.gate(self.conv(x)), axis=[1, 2])
""",
}


def _keras_user_files(ws: Path) -> None:
    """The README's user package ``my_pkg`` (a custom layer, a subclassed model) and the files
    it names: custom.keras, subclassed.keras and lambdas.keras (saved in a child process, so the
    classes are registered only where --import registers them)."""
    pkg = ws / "my_pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for name, text in _USER_MODULES.items():
        (pkg / name).write_text(text)
    script = """\
import keras
import numpy as np
from my_pkg.layers import Gate
from my_pkg.models import Net

keras.utils.set_random_seed(0)
i = keras.Input((32, 32, 3), name="x")
keras.Model(i, Gate(name="gate")(keras.layers.Conv2D(4, 3, name="conv")(i))).save("custom.keras")
net = Net()
net(np.zeros((1, 32, 32, 3), np.float32))
net.save("subclassed.keras")
j = keras.Input((8,), name="x")
keras.Model(j, keras.layers.Lambda(lambda t: t * 2.0, name="double")(keras.layers.Dense(4, name="fc")(j))).save(
    "lambdas.keras")
"""
    env = {**os.environ, "PYTHONPATH": str(ws)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _python_block_after(heading: str) -> str:
    """The first python block after ``heading`` in the README (the plugin file it describes)."""
    text = README.read_text()
    start = text.index(heading)
    block = next(b for b in readme_blocks() if b.lang == "python" and text.count("\n", 0, start) < b.line)
    return block.body


def _check_runnable(cmd: str, ws: Path) -> None:
    if re.search(r"resnet-|resnet50_v2-", cmd) and not (ws / "resnet-symbol.json").exists():
        pytest.skip("the mxnet side environment is missing (make mxnet-env creates it)")


def _directive(block: Block, key: str) -> str | None:
    if block.directive.startswith(key + ":") or block.directive.startswith(key + " "):
        return block.directive[len(key) + 1:].strip()
    return None


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block: Block, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip = _directive(block, "skip")
    if skip:
        pytest.skip(f"README {block.id}: {skip}")
    monkeypatch.chdir(workspace)
    monkeypatch.syspath_prepend(str(workspace))  # the user's packages (mypkg, my_pkg) import from here
    if block.lang == "python":
        # its own process: a snippet may register plugins or set global state
        code = block.body
        prelude = _directive(block, "prelude")
        if prelude:
            code = prelude + "\n" + code
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workspace), str(REPO)])}
        proc = subprocess.run([sys.executable, "-c", code], cwd=workspace, env=env, capture_output=True,
                              text=True, timeout=1200)
        assert proc.returncode == 0, f"README.md:{block.line}:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        return
    expect = int(_directive(block, "exit") or 0)
    ran = 0
    for cmd in block.commands():
        why = not_run_reason(cmd)
        if why is not None:
            continue
        assert cmd.startswith("portanet "), (
            f"README.md:{block.line}: '{cmd}' is neither a portanet command nor listed in NOT_RUN with a reason")
        _check_runnable(cmd, workspace)
        args = shlex.split(cmd)[1:]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        out = result.output
        assert result.exit_code == expect, f"README.md:{block.line}: `{cmd}` exited {result.exit_code}:\n{out[-3000:]}"
        assert "Traceback" not in out and "internal error" not in out, out[-3000:]
        ran += 1
    if not ran:
        pytest.skip(f"README {block.id}: every line is listed in NOT_RUN")


def test_every_not_run_pattern_is_used() -> None:
    """NOT_RUN lists only lines the README really has (a stale entry would hide nothing)."""
    lines = [cmd for b in readme_blocks() for cmd in b.commands()]
    lines += [ln.strip() for b in readme_blocks() if b.lang == "sh" for ln in b.body.splitlines()]
    for pattern in NOT_RUN:
        assert any(re.search(pattern, ln) for ln in lines), pattern
