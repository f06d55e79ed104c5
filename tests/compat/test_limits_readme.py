"""The README's table of consumer limitations is generated from ``tests/compat/limits.py``
(the list the matrix test enforces): it must hold that table verbatim."""

from __future__ import annotations

from pathlib import Path

from tests.compat.limits import KNOWN_LIMITS, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- compat-limits:begin -->", "<!-- compat-limits:end -->"


def readme_table() -> str:
    text = README.read_text()
    return text[text.index(BEGIN) + len(BEGIN): text.index(END)].strip()


def test_readme_lists_exactly_the_known_limitations():
    assert readme_table() == markdown_table(), "regenerate with: python -m tests.compat.limits --write-readme"
    assert len(readme_table().splitlines()) == len(KNOWN_LIMITS) + 2


def test_every_limitation_names_a_consumer_and_a_reason():
    from tests.compat.test_matrix import CONSUMERS

    for lim in KNOWN_LIMITS:
        assert lim.consumer in CONSUMERS and lim.consumer != "ort"  # ORT is the reference itself
        assert len(lim.reason) > 20
