"""Running one fuzz case: convert in-process (as ``portanet convert`` does) and classify the end.

A case ends in one of three ways:

* ``ok``: the conversion succeeded and the written file passes ``onnx.checker`` and loads in
  ONNX Runtime;
* ``error``: a ``PortanetError`` with a one-line message, no output file, and nothing else
  on stderr (no Python warning, no third-party log record, no C++ log line);
* ``bug``: anything else (another exception, a hang, a multi-line message, noise on stderr,
  a half-written output, an invalid output model).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: wall-clock limit of one in-process case (a hang is a bug)
CASE_SECONDS = 60


@dataclass
class Outcome:
    kind: str  # "ok" | "error" | "bug"
    message: str = ""
    noise: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        extra = f" [noise: {' | '.join(self.noise)[:300]}]" if self.noise else ""
        return f"{self.kind}: {self.message[:600]}{extra}"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("portanet"):
            self.records.append(record)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what native code and Python write to file descriptor 2 while the block runs."""
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace").strip()
            if text:
                out.append(text)


class _Timeout(BaseException):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise _Timeout()


def convert_case(paths: list[Path], out: Path, framework: str | None = None, **options: Any) -> Outcome:
    """Convert ``paths`` like the CLI (convert, -O1, save) and classify the result."""
    from portanet.converters.registry import ConvertOptions, convert_paths
    from portanet.errors import PortanetError
    from portanet.ir.io import save_onnx
    from portanet.optimizer import optimize

    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.WARNING)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    outcome: Outcome
    try:
        with warnings.catch_warnings(record=True) as caught, _captured_stderr() as err:
            # what `python -m portanet` / the console script shows: Python's default filters
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for cat in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", cat)
            try:
                model = convert_paths(paths, ConvertOptions(**options), framework=framework)
                model = optimize(model, level=1)
                save_onnx(model, out)
                outcome = Outcome("ok")
            except PortanetError as exc:
                outcome = Outcome("error", str(exc))
            except _Timeout:
                outcome = Outcome("bug", f"hang: more than {CASE_SECONDS} s")
            except Exception as exc:  # noqa: BLE001 - that is what the fuzzer looks for
                tb = traceback.format_exception(exc)
                outcome = Outcome("bug", f"{type(exc).__name__}: {exc}\n{''.join(tb[-4:])}")
            except RecursionError as exc:
                outcome = Outcome("bug", f"RecursionError: {exc}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        root.removeHandler(handler)
        root.setLevel(old_level)
    noise = [*err, *(f"{w.category.__name__}: {w.message}" for w in caught),
             *(f"{r.name}: {r.getMessage()}" for r in handler.records)]
    if outcome.kind == "error":
        if "\n" in outcome.message.strip():
            return Outcome("bug", "multi-line error message: " + outcome.message)
        if out.exists():
            return Outcome("bug", "error but an output file was written: " + outcome.message)
        if noise:
            return Outcome("bug", "error with noise on stderr: " + outcome.message, noise)
        return outcome
    if outcome.kind == "ok":
        problem = check_output(out)
        if problem:
            return Outcome("bug", "converted to an invalid model: " + problem)
    outcome.noise = noise if outcome.kind == "bug" else []
    return outcome


def check_output(path: Path) -> str | None:
    """None if ``path`` is a valid ONNX model that ONNX Runtime loads, else the problem."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return None
