"""The docs a clone carries: every relative link and every repository path they name exists
(without ../shared or anything else beside the repository), and every recorded result is listed
in docs/results/README.md."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "tests" / "data" / "mmcv-carafe" / "README.md"]
# Paths a doc names as the output of a command (the example's curves, the GPU targets' file), as
# history (the candidate patches that git has at 8d888c8), or in another repository (mmcv's
# tests/data/for_carafe).
ELSEWHERE = re.compile(r"examples/curves\.png$|results/gpu-targets\.json$|candidates/[\w-]+\.patch$|for_carafe")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_resolve(doc):
    text = doc.read_text()
    missing = [t for t in re.findall(r"\]\(([^)#\s]+)", text)
               if not t.startswith(("http://", "https://")) and not (doc.parent / t).exists()]
    missing += [t for t in re.findall(r"\b((?:docs|benchmarks|dlu_triton|tests|examples)/[\w./-]*\w)", text)
                if not ELSEWHERE.search(t) and not (ROOT / t).exists()]
    assert not missing, f"{doc.name} names what the repository does not have: {sorted(set(missing))}"
    assert "../shared" not in text, f"{doc.name} points outside the repository"


def test_every_result_is_listed():
    results = ROOT / "docs" / "results"
    index = (results / "README.md").read_text()
    files = [p for p in results.rglob("*") if p.is_file() and p.name != "README.md"]
    unlisted = []
    for p in files:
        name = p.name
        stem, suffix = name.rsplit(".", 1) if "." in name else (name, "")
        # a row may list siblings as `stem.md`, `.json`: either the full name or the stem with it
        if name not in index and not (f"`{stem}." in index and f".{suffix}" in index):
            unlisted.append(str(p.relative_to(results)))
    assert not unlisted, f"docs/results/README.md lists no line for {unlisted}"
