"""Cells of the compatibility matrix that a consumer cannot run for a reason of its own.

This is the one list: the matrix test expects exactly these cells to fail (a listed cell that
starts passing fails the test too, so the list never goes stale), and the README's
compatibility table is ``markdown_table()`` (a test checks the README holds it verbatim).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch


@dataclass(frozen=True)
class Limit:
    consumer: str
    #: fnmatch pattern over source ids (``<importer>-<name>``)
    models: str
    #: output opsets concerned (None: every opset)
    opsets: tuple[int, ...] | None
    reason: str
    #: the limitation applies to files holding one of these ops (None: to every file)
    ops: tuple[str, ...] | None = None
    #: batch sizes concerned (None: every batch)
    batches: tuple[int, ...] | None = None


KNOWN_LIMITS: tuple[Limit, ...] = (
    Limit("reference", "*", (13,),
          "onnx.reference's BatchNormalization-9 kernel (the one below opset 14) computes wrong values "
          "(0.16 off on a 2x3x4x4 case); from BatchNormalization-14 on it is exact",
          ops=("BatchNormalization",)),
    Limit("openvino", "*", (13, 15, 17),
          "OpenVINO's ONNX reader ignores the axes attribute of ReduceLogSumExp (before opset 18) and "
          "reduces every axis; from opset 18 (axes as an input) it is right",
          ops=("ReduceLogSumExp",)),
    Limit("opencv", "cntk-reduce_max_all", None,
          "OpenCV DNN's ReduceMax over every axis but the batch gives a wrong maximum for some samples "
          "at batch > 1 (sample 2 of 3: 1.68 instead of 2.55)",
          batches=(3,)),
)


def limit_for(consumer: str, source_id: str, opset: int, batch: int, ops: set[str]) -> Limit | None:
    """The limitation covering this cell; ``ops`` are the op types in the cell's file."""
    for lim in KNOWN_LIMITS:
        if (lim.consumer == consumer and fnmatch(source_id, lim.models)
                and (lim.opsets is None or opset in lim.opsets)
                and (lim.batches is None or batch in lim.batches)
                and (lim.ops is None or ops & set(lim.ops))):
            return lim
    return None


def markdown_table() -> str:
    """The README's table of known limitations (one row per entry)."""
    rows = ["| consumer | models | opsets | batch | files with | reason |", "| --- | --- | --- | --- | --- | --- |"]
    for lim in KNOWN_LIMITS:
        opsets = "all" if lim.opsets is None else ", ".join(map(str, lim.opsets))
        batches = "all" if lim.batches is None else ", ".join(map(str, lim.batches))
        ops = "any op" if lim.ops is None else ", ".join(lim.ops)
        rows.append(f"| {lim.consumer} | `{lim.models}` | {opsets} | {batches} | {ops} | {lim.reason} |")
    return "\n".join(rows)


def write_readme(readme: str) -> None:
    """Put ``markdown_table()`` between the README's compat-limits markers."""
    from pathlib import Path

    path = Path(readme)
    text = path.read_text()
    begin, end = "<!-- compat-limits:begin -->", "<!-- compat-limits:end -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{markdown_table()}\n{end}{tail}")


if __name__ == "__main__":  # python -m tests.compat.limits [--write-readme]
    import sys

    if "--write-readme" in sys.argv:
        write_readme("README.md")
    else:
        print(markdown_table())
