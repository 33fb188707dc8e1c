"""Each DVC stage's `deps` list every project module its command can import, so editing code
reruns the stages that run it (and no test or review has to remember which ones do)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PROJECT_PACKAGES = ("pixpro", "stages")
# Imported by every command but computing nothing a stage writes: the CLI's dispatch table, the
# malloc restart (tests/test_allocator.py), the progress bar, the error classes and the package
# marker that only offers load_backbone lazily.
NOT_RESULTS = {"stages/cli.py", "stages/__init__.py", "pixpro/__init__.py", "pixpro/allocator.py",
               "pixpro/progress.py", "pixpro/errors.py", "pixpro/data/__init__.py", "pixpro/model/__init__.py"}


def module_file(name: str) -> str | None:
    """pixpro.data.views -> 'pixpro/data/views.py' (or a package's __init__.py); None if not ours."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    path = Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if (REPO / candidate).is_file():
            return candidate.as_posix()
    return None


def imported_files(path: str) -> set[str]:
    """Project files that `path` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pixpro.data import synthetic` imports a module; `from pixpro.io import x` a name
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            file = module_file(name)
            while file is None and "." in name:  # pixpro.model.pixpro.PixPro -> pixpro.model.pixpro
                name = name.rsplit(".", 1)[0]
                file = module_file(name)
            if file:
                found.add(file)
    return found


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(imported_files(path) - seen)
    return seen


def stages() -> list[tuple[str, str, list[str]]]:
    """(stage, its command module, deps) from dvc.yaml."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    rows = []
    for name, stage in spec.items():
        body = stage.get("do", stage)
        command = body["cmd"].split("pixpro ", 1)[1].split()[0].replace("-", "_")
        rows.append((name, f"stages/{command}.py", body.get("deps", [])))
    return rows


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage, command, deps", stages(), ids=[row[0] for row in stages()])
def test_stage_deps_list_every_project_module_the_command_imports(stage, command, deps):
    missing = sorted(path for path in closure(command) - NOT_RESULTS if not covered(path, deps))
    assert missing == [], f"dvc.yaml stage {stage!r} runs {command}, which imports these unlisted modules"


def test_the_import_scan_sees_function_level_imports():
    # stages import pixpro inside their commands (so --help stays fast); the scan must see those.
    assert "pixpro/features.py" in imported_files("stages/extract.py")
