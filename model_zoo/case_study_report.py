"""Results of the case study and their forms: ``report.json``, ``report.md``, ``report.png`` and
the rich table printed at the end of ``make demo``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: (backend, batch size) pairs whose p50 latency the table shows, in column order
LATENCY_COLUMNS: tuple[tuple[str, int], ...] = (
    ("source", 1), ("source", 64), ("ort", 1), ("ort", 64), ("torch", 1), ("torch", 64))
#: the backends running the converted model
CONVERTED = ("ort", "torch")


@dataclass
class ParityEntry:
    """One backend's comparison with the source framework on the parity images."""

    backend: str
    max_abs: float
    max_rel: float
    top1: float | None
    passed: bool


@dataclass
class FrameworkRow:
    """Everything measured for one source framework (one row of the table)."""

    key: str
    title: str
    #: what ran the source model (the parity reference)
    reference: str = ""
    #: "trained natively" or where the weights came from
    weights: str = ""
    #: "ok", "skipped: ..." or "failed: ..."
    status: str = "ok"
    source_accuracy: float | None = None
    #: converted model's test accuracy per backend
    accuracy: dict[str, float] = field(default_factory=dict)
    train_seconds_per_epoch: float | None = None
    train_epochs: int = 0
    #: "backend/batch" -> p50 latency (ms)
    latency_ms: dict[str, float] = field(default_factory=dict)
    parity: list[ParityEntry] = field(default_factory=list)
    #: the converted ONNX file (relative to the output folder)
    onnx: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def parity_max_abs(self) -> float | None:
        return max((p.max_abs for p in self.parity), default=None)

    @property
    def parity_passed(self) -> bool | None:
        return all(p.passed for p in self.parity) if self.parity else None


@dataclass
class CaseStudyResult:
    data: dict[str, Any]
    settings: dict[str, Any]
    rtol: float
    atol: float
    parity_images: int
    rows: list[FrameworkRow] = field(default_factory=list)
    finetune: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> str:
        d = asdict(self)
        for row, r in zip(d["rows"], self.rows):
            row["parity_max_abs"] = r.parity_max_abs
            row["parity_passed"] = r.parity_passed
        return json.dumps(_finite(d), indent=1) + "\n"


def _finite(x: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


# ------------------------------------------------------------------------------ the table
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _err(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


HEADERS = ["Framework", "Source run by", "Weights", "Source acc.", "Converted acc. (ORT / torch)",
           "Train s/epoch"] + [f"{b} b{n} ms" for b, n in LATENCY_COLUMNS] + ["Max parity err", "Parity"]


def table_rows(result: CaseStudyResult) -> list[list[str]]:
    """The table's cells, one list per framework (skipped frameworks say why)."""
    out = []
    for r in result.rows:
        if not r.ok:
            out.append([r.title, r.reference or "—", r.weights or "—"] + ["—"] * (len(HEADERS) - 4) + [r.status])
            continue
        conv = " / ".join(_pct(r.accuracy.get(b)) for b in CONVERTED)
        train = f"{r.train_seconds_per_epoch:.2f}" if r.train_seconds_per_epoch is not None else "—"
        lat = [_ms(r.latency_ms.get(f"{b}/{n}")) for b, n in LATENCY_COLUMNS]
        verdict = {True: "pass", False: "FAIL", None: "—"}[r.parity_passed]
        out.append([r.title, r.reference, r.weights, _pct(r.source_accuracy), conv, train, *lat,
                    _err(r.parity_max_abs), verdict])
    return out


def markdown_table(result: CaseStudyResult) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    return "\n".join(lines) + "\n"


COLUMN_NOTES = """\
What the columns mean:

- **Source run by**: the framework (or independent implementation) that executed the source model;
  it produced the source accuracy and is the reference of the parity check.
- **Weights**: *trained natively* (that framework's own training loop) or *from PyTorch* (the trained
  PyTorch weights written into that framework's files, so the row has a meaningful accuracy).
- **Source acc.**: top-1 accuracy of the source model on the test split, run by its framework.
- **Converted acc. (ORT / torch)**: top-1 accuracy of portanet's converted model on ONNX Runtime and
  on portanet's torch backend.
- **Train s/epoch**: median wall-clock seconds per native training epoch (frameworks trained here only).
- **source bN ms**: median (p50) latency of one inference call of the source model in its own
  framework at batch size N (PyTorch eager, a Keras call, OpenCV DNN's forward); "—" where the
  source runs only in another process (mxnet) or nowhere (CNTK).
- **ort/torch bN ms**: the same for the converted model on ONNX Runtime and on portanet's torch
  backend (`portanet.runtime.bench`: warm-up, then timed runs), on this machine's CPU.
- **Max parity err**: the largest absolute difference between the source framework's output
  probabilities and the converted model's, over both backends and all parity images.
- **Parity**: *pass* when every output element satisfies |converted - source| <= atol + rtol * |source|.
"""


def markdown(result: CaseStudyResult, picture: str = "report.png") -> str:
    s = result.settings
    parts = [
        "# portanet case study: one CNN, five frameworks\n",
        "The case-study CNN (Conv 16 k3 ReLU → MaxPool 2 → Conv 32 k4 ReLU → AvgPool 2 → Dropout 0.3 → "
        "Conv 64 k5 ReLU → Flatten → Dense 32 tanh → Dropout 0.2 → Dense 10 → Softmax) built in each "
        "framework, converted with portanet, verified against its source and run on every backend.\n",
        f"Data: `{result.data.get('name')}` ({result.data.get('train')} training / {result.data.get('test')} "
        f"test images; pixels scaled to [0, 1], standardised with mean 0.1307 and std 0.3081). "
        f"Native training: {s.get('epochs')} epoch(s) of shuffled mini-batches of {s.get('batch_size')}"
        + (f" (at most {s['max_batches']} per epoch)" if s.get("max_batches") else "")
        + f", cross-entropy on the logits, SGD lr {s.get('lr')} momentum {s.get('momentum')}, "
        f"learning rate x{s.get('gamma')} after each epoch. Parity: {result.parity_images} test images, "
        f"rtol={result.rtol:g}, atol={result.atol:g}. "
        f"PyTorch/TensorFlow/OpenCV threads: {s.get('threads') or 'their defaults'}.\n",
        markdown_table(result),
        f"\n![latency and accuracy per framework]({picture})\n",
        "\n" + COLUMN_NOTES,
    ]
    if result.finetune:
        f = result.finetune
        if f.get("status", "ok") == "ok":
            parts.append(
                f"\n## Fine-tuning a converted model\n\nThe converted {f['framework']} model was fine-tuned with "
                f"portanet's Trainer (torch backend; {f['epochs']} epoch, {f['train_samples']} images, SGD lr "
                f"{f['lr']:.4g}) and exported to ONNX again (`{f['onnx']}`). Test accuracy on ONNX Runtime: "
                f"{_pct(f['accuracy_before'])} before, {_pct(f['accuracy_after'])} after. "
                f"The same from the command line:\n\n    {f['command']}\n")
        else:
            parts.append(f"\n## Fine-tuning a converted model\n\n{f['status']}\n")
    notes = [f"- {r.title}: {n}" for r in result.rows for n in r.notes]
    if notes:
        parts.append("\n## Notes\n\n" + "\n".join(notes) + "\n")
    if result.tools:
        parts.append("\n## Versions\n\n" + ", ".join(f"{k} {v}" for k, v in result.tools.items()) + "\n")
    parts.append(f"\nTotal run time: {result.seconds:.0f} s.\n")
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


#: the terminal table drops the descriptive columns (1, 2: in report.md) to fit 100 columns
_SHORT = (["Framework", "Src acc", "ORT / torch acc", "s/epoch"] + [f"{b} b{n}" for b, n in LATENCY_COLUMNS]
          + ["max err", "parity"])


def rich_table(result: CaseStudyResult) -> Any:
    from rich.table import Table

    table = Table(title="portanet case study (latency: p50 ms)", show_lines=False)
    for h in _SHORT:
        table.add_column(h, overflow="fold")
    for cells in table_rows(result):
        short = [cells[0]] + cells[3:]
        verdict = short[-1]
        style = {"pass": "green", "FAIL": "bold red"}.get(verdict, "yellow")
        if verdict not in ("pass", "FAIL"):
            verdict = verdict if len(verdict) <= 70 else verdict[:67] + "..."
        table.add_row(*short[:-1], f"[{style}]{verdict}[/]")
    return table


# ------------------------------------------------------------------------------ the picture
def plot(result: CaseStudyResult, path: Path) -> Path:
    """Bars: p50 latency per backend at each batch size, and source/converted accuracy."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import numpy as np
    from matplotlib.figure import Figure

    from portanet.ir.io import atomic_write_bytes

    rows = [r for r in result.rows if r.ok]
    names = [r.title for r in rows]
    xs = np.arange(len(rows))
    batches = sorted({n for _, n in LATENCY_COLUMNS})
    backends = list(dict.fromkeys(b for b, _ in LATENCY_COLUMNS))
    fig = Figure(figsize=(4.2 * (len(batches) + 1), 4.0), dpi=110)
    axes = fig.subplots(1, len(batches) + 1)
    width = 0.8 / max(1, len(backends))
    for ax, n in zip(axes, batches):
        for i, b in enumerate(backends):
            ys = [r.latency_ms.get(f"{b}/{n}", np.nan) for r in rows]
            ax.bar(xs + (i - (len(backends) - 1) / 2) * width, ys, width, label=b)
        ax.set_title(f"p50 latency, batch {n}")
        ax.set_yscale("log")  # ORT's tens of microseconds next to a Keras call's milliseconds
        ax.set_ylabel("ms (log scale)")
        ax.set_xticks(xs, names, rotation=20)
        ax.legend(fontsize=8)
    ax = axes[-1]
    series = [("source", [r.source_accuracy for r in rows])] + [
        (f"converted ({b})", [r.accuracy.get(b) for r in rows]) for b in CONVERTED]
    width = 0.8 / len(series)
    for i, (label, vals) in enumerate(series):
        ys = [100 * v if v is not None else np.nan for v in vals]
        ax.bar(xs + (i - (len(series) - 1) / 2) * width, ys, width, label=label)
    finite = [100 * v for _, vals in series for v in vals if v is not None]
    low = max(0.0, min(finite) - 5) if finite else 0.0
    ax.set_ylim(low, 100)
    ax.set_title("test accuracy")
    ax.set_ylabel("%")
    ax.set_xticks(xs, names, rotation=20)
    # below the bars: with accuracies near 100% any corner of the panel is taken
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(series))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def write_all(result: CaseStudyResult, out: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.png into ``out``."""
    from portanet.ir.io import atomic_write_bytes

    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    atomic_write_bytes(paths["json"], result.to_json().encode())
    plot(result, paths["png"])
    atomic_write_bytes(paths["md"], markdown(result, paths["png"].name).encode())
    return paths
