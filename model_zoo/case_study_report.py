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
    #: "backend/batch" -> (p90 - p10) / p50 of the timed runs
    latency_spread: dict[str, float] = field(default_factory=dict)
    #: "backend/batch" -> why that figure is unreliable (large spread, busy machine)
    latency_unreliable: dict[str, str] = field(default_factory=dict)
    #: seconds of every native training epoch (the table shows their median)
    train_seconds_all: list[float] = field(default_factory=list)
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
    #: the round trip back into frameworks (model_zoo/case_study_export.py)
    export: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    #: measurement conditions at the start and the end of the run (load average, cores, threads)
    conditions: dict[str, Any] = field(default_factory=dict)

    def unreliable(self) -> list[str]:
        """Every latency figure flagged unreliable, as "Framework backend bN: why"."""
        return [f"{r.title} {key.replace('/', ' b')}: {why}" for r in self.rows
                for key, why in r.latency_unreliable.items()]

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


def _ms(x: float | None, flagged: bool = False) -> str:
    """A latency cell; a dagger marks a figure measured under conditions that make it unreliable."""
    return "—" if x is None else f"{x:.3f}" + (" †" if flagged else "")


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
        lat = [_ms(r.latency_ms.get(f"{b}/{n}"), f"{b}/{n}" in r.latency_unreliable) for b, n in LATENCY_COLUMNS]
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
- **Train s/epoch**: median wall-clock seconds per native training epoch (frameworks trained here only;
  the range over epochs is under "Measurement conditions").
- **source bN ms**: median (p50) latency of one inference call of the source model in its own
  framework at batch size N (PyTorch eager, a Keras call, OpenCV DNN's forward); "—" where the
  source runs only in another process (mxnet) or nowhere (CNTK).
- **ort/torch bN ms**: the same for the converted model on ONNX Runtime and on portanet's torch
  backend (`portanet.runtime.bench`: warm-up, then timed runs), on this machine's CPU.
- **†**: a latency figure whose timed runs spread by more than half the median (p10 to p90), or that
  was measured while the machine was busy; see "Measurement conditions".
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
    if result.export:
        from model_zoo.case_study_export import markdown as export_markdown

        parts.append(export_markdown(result.export))
    parts.append(conditions_markdown(result))
    notes = [f"- {r.title}: {n}" for r in result.rows for n in r.notes]
    if notes:
        parts.append("\n## Notes\n\n" + "\n".join(notes) + "\n")
    if result.tools:
        parts.append("\n## Versions\n\n" + ", ".join(f"{k} {v}" for k, v in result.tools.items()) + "\n")
    parts.append(f"\nTotal run time: {result.seconds:.0f} s.\n")
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


def conditions_markdown(result: CaseStudyResult) -> str:
    """How trustworthy the timings are: load, threads, spread, flagged figures."""
    c = result.conditions
    start, end = c.get("start", {}), c.get("end", {})
    lines = ["\n## Measurement conditions\n"]
    lines.append(f"- Machine: {start.get('cpu_count', '?')} cores, {start.get('platform', '?')}, "
                 f"Python {start.get('python', '?')}.")
    lines.append(f"- Load average (1, 5, 15 min): {start.get('load_average')} at the start, "
                 f"{end.get('load_average')} at the end.")
    threads = result.settings.get("threads")
    env = start.get("thread_env") or {}
    lines.append(f"- Threads: {'--threads ' + str(threads) if threads else 'frameworks default (all cores)'}"
                 f"; torch intra-op threads {end.get('torch_threads', '?')}"
                 + (f"; environment {env}" if env else "") + ".")
    b = result.settings.get("bench") or {}
    lines.append(f"- Latency: {b.get('warmup', '?')} warm-up calls, then at least {b.get('iters', '?')} timed calls "
                 f"and {b.get('min_seconds', '?')} s per cell; the table shows the median (p50).")
    spreads = [(f"{r.title} {k.replace('/', ' b')}", v) for r in result.rows for k, v in r.latency_spread.items()]
    if spreads:
        worst = max(spreads, key=lambda kv: kv[1])
        lines.append(f"- Spread (p90 - p10) / p50 of the timed calls: median "
                     f"{sorted(v for _, v in spreads)[len(spreads) // 2]:.0%}, worst {worst[1]:.0%} ({worst[0]}).")
    for r in result.rows:
        if r.train_seconds_all:
            lines.append(f"- {r.title} training: {len(r.train_seconds_all)} epoch(s), "
                         f"{min(r.train_seconds_all):.2f}-{max(r.train_seconds_all):.2f} s per epoch.")
    flagged = result.unreliable()
    if flagged:
        lines.append(f"- **{len(flagged)} latency figure(s) are unreliable (marked †)**: "
                     + "; ".join(flagged[:8]) + ("; ..." if len(flagged) > 8 else "")
                     + ". Rerun on an idle machine, or with `--threads 1`, before quoting them.")
    else:
        lines.append("- Every latency figure had a small spread on a machine that was not busy.")
    return "\n".join(lines) + "\n"


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
#: why a framework has no bar in a latency panel
_NO_SOURCE_BAR = {"mxnet": "mxnet runs in a side process", "cntk": "no CNTK runtime exists"}
_BACKEND_LABELS = {"source": "source framework", "ort": "ONNX Runtime", "torch": "torch backend"}


def plot(result: CaseStudyResult, path: Path) -> Path:
    """One panel per batch size (linear latency axis, value on every bar, p10-p90 whiskers),
    then test accuracy; a framework without an in-process source runtime gets a note instead of
    a bar, and unreliable figures are hatched."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from portanet.ir.io import atomic_write_bytes

    rows = [r for r in result.rows if r.ok]
    names = [r.title for r in rows]
    xs = np.arange(len(rows))
    batches = sorted({n for _, n in LATENCY_COLUMNS})
    backends = list(dict.fromkeys(b for b, _ in LATENCY_COLUMNS))
    colors = {"source": "#7f7f7f", "ort": "#1f77b4", "torch": "#ff7f0e"}
    fig = Figure(figsize=(5.2 * (len(batches) + 1), 4.6), dpi=110)
    axes = fig.subplots(1, len(batches) + 1)
    width = 0.8 / max(1, len(backends))
    for ax, n in zip(axes, batches):
        top = max([r.latency_ms.get(f"{b}/{n}", 0.0) for r in rows for b in backends] + [1e-3])
        for i, b in enumerate(backends):
            offs = xs + (i - (len(backends) - 1) / 2) * width
            ys = [r.latency_ms.get(f"{b}/{n}", np.nan) for r in rows]
            bars = ax.bar(offs, ys, width, color=colors.get(b))
            for x, y, r, bar in zip(offs, ys, rows, bars):
                if np.isnan(y):
                    if b == "source":
                        ax.text(x, top * 0.02, _NO_SOURCE_BAR.get(r.key, "not timed"), rotation=90, ha="center",
                                va="bottom", fontsize=7, color="0.35")
                    continue
                if f"{b}/{n}" in r.latency_unreliable:
                    bar.set_hatch("//")
                ax.text(x, y + top * 0.01, f"{y:.0f}" if y >= 10 else f"{y:.2g}", ha="center", va="bottom",
                        fontsize=7, rotation=90)
        ax.set_ylim(0, top * 1.3)
        ax.set_title(f"inference latency, batch {n} (p50)")
        ax.set_ylabel("milliseconds per call")
        ax.set_xticks(xs, names, rotation=20)
        handles = [Patch(facecolor=colors.get(b), label=_BACKEND_LABELS.get(b, b)) for b in backends]
        if any(r.latency_unreliable for r in rows):
            handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//", label="unreliable (busy/spread)"))
        ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
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
    ax.set_ylabel(f"% correct (axis starts at {low:.0f}%)")
    ax.set_xticks(xs, names, rotation=20)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(series))
    load = (result.conditions.get("start") or {}).get("load_average")
    threads = result.settings.get("threads")
    flagged = len(result.unreliable())
    fig.suptitle(f"portanet case study — load average {load}, threads: {threads or 'default'}"
                 + (f", {flagged} unreliable figure(s) hatched" if flagged else ""), fontsize=10)
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
