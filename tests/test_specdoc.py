"""The README's spec reference is generated from the spec models and must stay current."""

from pathlib import Path

from workflows.specdoc import BEGIN, END, spec_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_spec_reference_is_current():
    text = README.read_text()
    current = text[text.index(BEGIN) : text.index(END) + len(END)]
    stale = "README spec reference is stale: run python -m workflows.specdoc --write README.md"
    assert current == spec_reference(), stale


def test_reference_documents_every_section():
    reference = spec_reference()
    for section in ("model", "backend", "build", "cluster", "serving", "loadtest", "benchmark", "reports"):
        assert f"| `{section}` |" in reference
    assert "| `build.tp` | int | `1` | (>= 1) |" in reference
