"""The case study's int8 row: the converted PyTorch model quantized by ``portanet.quantize``.

Calibration: 256 of the training digits, standardised like every other row (mean 0.1307,
std 0.3081); evaluation: the whole test split on ONNX Runtime. The row's "source accuracy" is
the float32 converted model's, its parity verdict is the accuracy budget (int8 within
``BUDGET`` points of float32), and a note gives both file sizes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from model_zoo import case_study_nets as nets
from model_zoo.case_study_report import FrameworkRow, ParityEntry

log = logging.getLogger("case_study")

#: accuracy points int8 may lose against the float32 model
BUDGET = 0.5
#: the converted model that is quantized (the row whose weights every other row shares)
DONOR = "pytorch"


def int8_row(ctx: Any, rows: Sequence[FrameworkRow], record_latency: Callable[[FrameworkRow, Any], None],
             batch_sizes: Sequence[int]) -> FrameworkRow:
    """Quantize ``models/pytorch.onnx`` and measure it like the other rows (ORT accuracy, latency)."""
    import portanet
    from portanet.quantize import QuantizeOptions, quantize
    from portanet.quantize.evaluate import run_outputs
    from portanet.runtime.bench import bench_model

    row = FrameworkRow("int8", "PyTorch int8", "ONNX Runtime (float32 model)",
                       "int8 by portanet quantize (static QDQ, per-channel, minmax, 256 training digits)")
    donor = next((r for r in rows if r.key == DONOR and r.ok), None)
    if donor is None:
        row.status = "skipped: no converted PyTorch model"
        return row
    try:
        src = ctx.out / donor.onnx
        opts = QuantizeOptions(samples=256, mean=[nets.MEAN], std=[nets.STD], max_accuracy_drop=BUDGET,
                               latency_batches=())
        result = quantize(portanet.load(src), ctx.digits.raw.path, opts)
        dst = ctx.out / "models" / f"{DONOR}-int8.onnx"
        portanet.save(result.model, dst)
        row.onnx = str(dst.relative_to(ctx.out))
        rep = result.report
        f, q = rep.rows
        row.source_accuracy, row.accuracy["ort"] = f.accuracy, q.accuracy
        # the int8 row's parity is against the float32 model, judged by the accuracy budget
        x = ctx.digits.x_test
        diff = np.abs(run_outputs(result.model, result.model.graph.inputs[0].name, x) - run_outputs(src, result.model.graph.inputs[0].name, x))
        row.parity.append(ParityEntry("ort", float(diff.max()), q.max_rel, q.agreement, bool(rep.budget_met)))
        size_f, size_q = src.stat().st_size, dst.stat().st_size
        row.notes.append(f"int8 file {size_q / 1e3:.0f} kB vs float32 {size_f / 1e3:.0f} kB ({size_q / size_f:.2f}x); "
                         f"accuracy {100 * q.accuracy:.2f}% vs {100 * f.accuracy:.2f}% "
                         f"({-rep.drop:+.2f} points, budget {BUDGET}); top-1 agreement {100 * q.agreement:.2f}%"
                         + (f"; kept float: {', '.join(rep.fallback.kept)}" if rep.fallback and rep.fallback.kept
                            else ""))
        for res in bench_model(result.model, backends=("ort",), batch_sizes=list(batch_sizes), **ctx.bench):
            record_latency(row, res)
    except Exception as exc:  # noqa: BLE001 - the row reports it; the rest of the case study stands
        log.exception("int8 quantization failed")
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        row.status = f"failed: {type(exc).__name__}: {first}"[:300]
    return row
