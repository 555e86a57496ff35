"""The layout DESIGN.md D22 promises, checked by parsing the code: two tiers, one direction, no circle,
and a reference short enough to read beside the paper."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository: tests/ is below it
MODULES = sorted(p.stem for p in ROOT.glob("*.py") if not p.stem.startswith(("test_", "conftest")))
REFERENCE = ("liv", "genome", "evolve", "fidelity", "train")  # the core a reader takes beside the paper
BELOW_REFERENCE = ("corpus",)                        # the data it trains on: imports nothing of ours


def imports(module: str) -> set[str]:
    """Every project module `module` imports, at the top or inside a function."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(MODULES) - {module}


def test_the_reference_imports_nothing_of_the_workshop_or_of_star():
    for m in REFERENCE:
        assert imports(m) <= set(REFERENCE) | set(BELOW_REFERENCE), (m, imports(m))
    for m in BELOW_REFERENCE:
        assert imports(m) == set(), m
    assert "star" not in imports("parallel")


def test_no_import_circle():
    graph = {m: imports(m) for m in MODULES}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for n in graph[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen
    circles = [m for m in MODULES if m in reach(m)]
    assert circles == []


def functions(module: str):
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("module", REFERENCE)
def test_no_reference_function_is_over_80_lines(module):
    long = [(name, n) for name, n in functions(module) if n > 80]
    assert long == []


def test_evolve_is_nsga2_and_short_and_the_synthesis_fits_a_screen():
    assert len((ROOT / "evolve.py").read_text().splitlines()) <= 500
    assert dict(functions("star"))["synthesize"] <= 60


def test_the_readme_is_short_and_its_links_lead_somewhere():
    """README is for users (at most 250 lines); the topics live in docs/, and every relative link of README
    and of the docs pages names a file that exists."""
    import re
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    pages = [readme] + sorted((ROOT / "docs").glob("*.md"))
    assert len(pages) >= 7
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)
