"""The layout's rules: the library never imports the CLI layer, and the jobs install as a
subpackage of cmrec (no generic top-level `pipelines` package)."""

from __future__ import annotations

import ast
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_library_never_imports_the_cli_or_a_pipeline() -> None:
    library = [
        p
        for p in (ROOT / "cmrec").rglob("*.py")
        if p.name != "cli.py" and "pipelines" not in p.relative_to(ROOT / "cmrec").parts
    ]
    assert len(library) > 50
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            n for n in _imports(p) if n.startswith(("cmrec.cli", "cmrec.pipelines"))
        )
        for p in library
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_pipelines_import_no_cli_and_nothing_imports_a_top_level_pipelines_package() -> None:
    for path in [*(ROOT / "pipelines").glob("*.py"), *(ROOT / "tests").rglob("*.py"), ROOT / "cmrec/cli.py"]:
        names = _imports(path)
        assert not any(n == "pipelines" or n.startswith("pipelines.") for n in names), path
        if path.parent.name == "pipelines":
            assert not any(n.startswith("cmrec.cli") for n in names), path


def test_the_jobs_are_installed_as_cmrec_pipelines() -> None:
    spec = importlib.util.find_spec("cmrec.pipelines.train")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve() == (ROOT / "pipelines" / "train.py").resolve()
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert found["include"] == ["cmrec*"]
