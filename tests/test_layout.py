"""The layout DESIGN.md D40 promises, checked by parsing the code: the reference at the root (the card's
modules and the data they train on), the workshop beside it in one package, one direction between them,
no circle, and a reference short enough to read beside the paper."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository: tests/ is below it
REFERENCE = ("corpus", "evolve", "genome", "liv", "star", "train")  # the card's modules and their data
WORKSHOP = sorted(p.stem for p in (ROOT / "workshop").glob("*.py") if p.stem != "__init__")


def _is_main_guard(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports(path: Path, skip_main: bool = True) -> set[str]:
    """The project modules `path` imports (`workshop` for any of the package's), at the top or inside a
    function; with `skip_main`, not inside `if __name__ == "__main__":` (a command's hand-over)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for top in tree.body if skip_main and _is_main_guard(top) for n in ast.walk(top)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & (set(REFERENCE) | {"workshop"})


def test_the_root_holds_the_reference_and_nothing_else():
    py = sorted(p.name for p in ROOT.glob("*.py"))
    assert py == sorted([f"{m}.py" for m in REFERENCE] + ["conftest.py", "test_star.py"])
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} >= {"workshop", "tests", "docs"}


def test_the_reference_imports_nothing_of_the_workshop():
    for m in REFERENCE:
        assert "workshop" not in imports(ROOT / f"{m}.py"), m
    assert imports(ROOT / "corpus.py") == set()  # the data: below everything


def test_no_import_circle_among_the_reference_modules():
    graph = {m: imports(ROOT / f"{m}.py") - {m, "workshop"} for m in REFERENCE}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for n in graph[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen
    assert [m for m in REFERENCE if m in reach(m)] == []


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_the_reference_is_short_and_so_are_its_functions():
    """The card's five modules at most 2,500 lines (corpus.py, the data they train on, stays separate and
    under 300), no function of the reference over 60 lines, `synthesize` one screen."""
    lines = {m: len((ROOT / f"{m}.py").read_text().splitlines()) for m in REFERENCE}
    assert sum(n for m, n in lines.items() if m != "corpus") <= 2500 and lines["corpus"] <= 300, lines
    long = [(m, name, n) for m in REFERENCE for name, n in functions(ROOT / f"{m}.py") if n > 60]
    assert long == []
    assert dict(functions(ROOT / "star.py"))["synthesize"] <= 60
    assert lines["evolve"] <= 500


@pytest.mark.parametrize("module", ["liv", "genome", "evolve", "train", "star", "corpus"])
def test_each_reference_file_opens_with_what_it_implements_and_where_the_paper_says_it(module):
    doc = ast.get_docstring(ast.parse((ROOT / f"{module}.py").read_text()))
    assert doc and re.search(r"§\d|Figure \d|eq\.|Eq\.|Section \d|the paper", doc), module


def test_the_readme_is_short_and_its_links_lead_somewhere():
    """README is for users (at most 250 lines); the topics live in docs/, and every relative link of README
    and of the docs pages names a file that exists."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    pages = [readme] + sorted((ROOT / "docs").glob("*.md"))
    assert len(pages) >= 7
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)
