"""The Python examples in the README and the plugin guide run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "docs/plugins.md", "docs/data.md"]


def python_blocks(document: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / document).read_text(), flags=re.S)


CASES = [(doc, i, code) for doc in DOCUMENTS for i, code in enumerate(python_blocks(doc))]


def test_the_documents_have_examples():
    assert {doc for doc, _, _ in CASES} == set(DOCUMENTS)


@pytest.mark.parametrize("document, index, code", CASES, ids=[f"{d}#{i}" for d, i, _ in CASES])
def test_python_example_runs(document, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    exec(compile(code, f"{document} block {index}", "exec"), {"__name__": "docs_example"})


def test_readme_lists_every_builtin_component():
    import mtmm_core

    readme = (ROOT / "README.md").read_text()
    missing = [c.name for c in mtmm_core.list_components() if f"`{c.name}`" not in readme]
    assert not missing, f"README does not mention {missing}"
