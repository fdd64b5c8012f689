"""The layers of the package, as import-linter reads them from pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_linter = pytest.mark.skipif(shutil.which("lint-imports") is None,
                                  reason="import-linter is not installed: pip install -e '.[test]'")


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["lint-imports", "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@needs_linter
def test_every_import_runs_down_the_layers() -> None:
    done = _lint(ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 kept, 0 broken" in done.stdout


@needs_linter
def test_the_contract_can_break(tmp_path) -> None:  # the control: core above cli is refused
    text = (ROOT / "pyproject.toml").read_text()
    upside_down = re.sub(r'    "cli",\n', "", text).replace('    "core",\n', '    "core",\n    "cli",\n')
    (tmp_path / "pyproject.toml").write_text(upside_down)
    done = _lint(tmp_path / "pyproject.toml")
    assert done.returncode != 0 and "vaescope.cli is not allowed to import vaescope.core" in done.stdout


def test_the_architecture_page_draws_the_contract() -> None:
    import tomllib

    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    contract = [{name.strip() for name in row.split("|")} for row in layers]
    page = (ROOT / "docs" / "architecture.md").read_text()
    diagram = page.split("```text\n", 1)[1].split("```", 1)[0]
    drawn = []
    for line in diagram.strip().splitlines():
        row = re.sub(r"\([^)]*\)", "", line.replace("└", "")).split(":")[-1]
        drawn.append({name.strip() for name in row.split("·")})
    assert drawn == contract


def test_every_part_of_the_package_has_a_layer() -> None:
    """import-linter checks only the modules a layer names: a new top-level module left out of the
    contract would import anything unchecked."""
    import tomllib

    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {name.strip() for row in layers for name in row.split("|")}
    package = ROOT / "src" / "vaescope"
    parts = {p.stem for p in package.glob("*.py")} | {p.parent.name for p in package.glob("*/__init__.py")}
    assert sorted(parts - named - {"__init__", "__main__"}) == []
