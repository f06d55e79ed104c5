"""The case study's round trip back into frameworks (``make demo``, after the fine-tuning stage).

The converted Caffe model is exported with ``portanet export``:

* to PyTorch code (``out/export/caffe_net.py`` + ``.pt``), imported as a plain Python module,
  evaluated, fine-tuned for one epoch with an ordinary PyTorch loop (SGD with momentum,
  negative log-likelihood of the module's softmax output) and evaluated again;
* to TensorFlow Lite (``out/export/caffe_net.tflite``, float32), evaluated in the TFLite
  interpreter.

Each export is first checked by portanet against ONNX Runtime in a fresh process; the rows
record that parity, the test accuracy and the export time.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo import case_study_nets as nets


def _row(title: str, target: str, result: Any, path: Path, out: Path) -> dict[str, Any]:
    c = result.check
    return {"title": title, "target": target, "file": str(path.relative_to(out)),
            "export_seconds": result.seconds, "parity_max_abs": c.max_error, "parity_passed": bool(c.passed)}


def _load_module(py: Path) -> Any:
    spec = importlib.util.spec_from_file_location("caffe_net", py)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _torch_predict(model: Any, x: np.ndarray, batch: int = 500) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def finetune_generated(py: Path, digits: nets.Digits, settings: nets.TrainSettings, train_samples: int | None,
                       on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """One epoch of a plain PyTorch loop on the generated module; accuracy before and after."""
    import torch

    mod = _load_module(py)
    model = mod.load()
    before = nets.accuracy(_torch_predict(model, digits.x_test), digits.y_test)
    torch.manual_seed(settings.seed)
    lr = settings.lr * settings.gamma ** settings.epochs  # where the native schedule ended
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.momentum)
    n = len(digits.y_train) if train_samples is None else min(train_samples, len(digits.y_train))
    x, y = torch.from_numpy(digits.x_train[:n]), torch.from_numpy(digits.y_train[:n])
    order = torch.from_numpy(np.random.default_rng(settings.seed).permutation(n))
    steps = -(-n // settings.batch_size)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = order[step * settings.batch_size:(step + 1) * settings.batch_size]
        probs = model(x[idx])  # the Caffe net ends in Softmax
        loss = torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_batch:
            on_batch(step + 1, steps)
    seconds = time.perf_counter() - start
    after = nets.accuracy(_torch_predict(model, digits.x_test), digits.y_test)
    tuned = py.with_name(py.stem + "-finetuned.pt")
    torch.save(model.state_dict(), tuned)
    return {"accuracy_before": before, "accuracy_after": after, "train_samples": n, "lr": lr,
            "seconds": seconds, "weights": tuned.name}


def tflite_predict(path: Path, x: np.ndarray, perm: list[int] | None, batch: int = 500) -> np.ndarray:
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    inp = interp.get_input_details()[0]
    outs = []
    for i in range(0, len(x), batch):
        chunk = np.ascontiguousarray(x[i:i + batch].transpose(perm) if perm else x[i:i + batch])
        interp.resize_tensor_input(inp["index"], list(chunk.shape))
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], chunk)
        interp.invoke()
        outs.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
    return np.concatenate(outs)


def round_trip(out: Path, sources: list[Path], digits: nets.Digits, settings: nets.TrainSettings,
               train_samples: int | None = None, on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Export the Caffe ``sources`` to PyTorch code and TFLite, evaluate, fine-tune (see module doc)."""
    import portanet

    folder = out / "export"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    py = folder / "caffe_net.py"
    res = portanet.export([str(s) for s in sources], to="pytorch", path=py)
    row = _row("Caffe → PyTorch code", "pytorch", res, py, out)
    row.update(finetune_generated(py, digits, settings, train_samples, on_batch))
    row["lines"] = py.read_text().count("\n")
    rows.append(row)
    tfl = folder / "caffe_net.tflite"
    res = portanet.export([str(s) for s in sources], to="tflite", path=tfl)
    row = _row("Caffe → TFLite (float32)", "tflite", res, tfl, out)
    perm = res.artifact.input_perms[0]
    row["accuracy_before"] = nets.accuracy(tflite_predict(tfl, digits.x_test, perm), digits.y_test)
    rows.append(row)
    return {"status": "ok", "rows": rows}


def markdown(section: dict[str, Any]) -> str:
    """The report's "Back into frameworks" section."""
    head = "\n## Back into frameworks: `portanet export`\n\n"
    if section.get("status") != "ok":
        return head + f"{section.get('status', 'not run')}\n"
    lines = [
        head + "The converted Caffe model exported with `portanet export`, each export checked against ONNX Runtime "
        "in a fresh process that does not import portanet (batch 1 and 3, |export - ORT| <= 1e-5 + 1e-4·max|ORT|; "
        "TFLite 1e-4·max|ORT|). The PyTorch code was then fine-tuned for one epoch with a plain PyTorch loop.\n",
        "| Export | File | Export s | Max parity err | Parity | Test acc. | After 1 epoch (plain PyTorch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        after = f"{100 * r['accuracy_after']:.2f}%" if "accuracy_after" in r else "—"
        lines.append(f"| {r['title']} | `{r['file']}` | {r['export_seconds']:.2f} | {r['parity_max_abs']:.1e} | "
                     f"{'pass' if r['parity_passed'] else 'FAIL'} | {100 * r['accuracy_before']:.2f}% | {after} |")
    return "\n".join(lines) + "\n"
