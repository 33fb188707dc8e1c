"""Each DVC stage's `deps` list every project module its command can import, so editing code
reruns the stages that run it (and no test or review has to remember which ones do), and
nothing else: a listed module that the command never imports reruns it for nothing.

The one exception is validation. Every stage validates the whole params.yaml before it starts,
so pixpro/config.py imports every section module (config_data.py, config_eval.py,
config_finetune.py) even where the stage reads none of their sections; a range check there
decides whether the stage starts, never what it computes. So the scan does not follow
config.py into a section module whose sections the stage's `params` do not read, and the stage
does not list it (nor what only it imports), unless the stage's own code imports it too:
editing a retrieval bound or the finetune recipe leaves `pretrain` up to date (checked with
`dvc status` below)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pixpro.config import Params
from tests.conftest import REPO, copy_repo, git_commit, run_checked

PROJECT_PACKAGES = ("pixpro", "stages")
# Imported by every command but computing nothing a stage writes: the CLI's dispatch table, the
# malloc restart (tests/test_allocator.py), the progress bar, the error classes and the package
# marker that only offers load_backbone lazily.
NOT_RESULTS = {"stages/cli.py", "stages/__init__.py", "pixpro/__init__.py", "pixpro/allocator.py",
               "pixpro/progress.py", "pixpro/errors.py", "pixpro/data/__init__.py", "pixpro/model/__init__.py"}
CORE = "pixpro/config.py"  # Params: imports every section module, and every stage runs it


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
        elif isinstance(node, ast.ImportFrom):
            # `from pixpro.data import synthetic` imports a module; `from pixpro.io import x` a name;
            # `from ._common import x` (stages/) is resolved against the importing file's package
            package = Path(path).parent.parts[:len(Path(path).parent.parts) - node.level + 1]
            module = ".".join([*package, node.module] if node.level else [node.module or ""]).strip(".")
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            file = module_file(name)
            while file is None and "." in name:  # pixpro.model.pixpro.PixPro -> pixpro.model.pixpro
                name = name.rsplit(".", 1)[0]
                file = module_file(name)
            if file:
                found.add(file)
    return found


def closure(start: str, skip: frozenset[str] | set[str] = frozenset()) -> set[str]:
    """Project files that `start` imports, transitively, without following the core config's
    imports of the `skip` modules (reached all the same where another file imports them)."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        found = imported_files(path)
        if path == CORE:
            found -= skip
        todo.extend(found - seen)
    return seen


def stages() -> list[tuple[str, str, list[str], list[str]]]:
    """(stage, its command module, deps, params) from dvc.yaml."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    rows = []
    for name, stage in spec.items():
        body = stage.get("do", stage)
        command = body["cmd"].split("pixpro ", 1)[1].split()[0].replace("-", "_")
        params = [key for key in body.get("params", []) if isinstance(key, str)]
        rows.append((name, f"stages/{command}.py", body.get("deps", []), params))
    return rows


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def section_modules() -> dict[str, set[str]]:
    """Config modules that hold only some sections -> those sections, from Params itself."""
    modules: dict[str, set[str]] = {}
    defaults = Params()
    for field in dataclasses.fields(Params):
        section = getattr(defaults, field.name)
        if dataclasses.is_dataclass(section):
            path = Path(inspect.getsourcefile(type(section))).relative_to(REPO).as_posix()
            modules.setdefault(path, set()).add(field.name)
    modules.pop(CORE)  # every stage runs it
    return modules


def validation_only(params: list[str]) -> set[str]:
    """The section modules the core config imports only to validate: the stage reads none of
    their sections."""
    return {path for path, sections in section_modules().items()
            if not any(key.split(".")[0] in sections for key in params)}


def needed(command: str, params: list[str]) -> set[str]:
    """The project files a stage runs for its results."""
    return closure(command, validation_only(params)) - NOT_RESULTS


STAGES = stages()


@pytest.mark.parametrize("stage, command, deps, params", STAGES, ids=[row[0] for row in STAGES])
def test_stage_deps_list_every_project_module_the_command_imports(stage, command, deps, params):
    missing = sorted(path for path in needed(command, params) if not covered(path, deps))
    assert missing == [], f"dvc.yaml stage {stage!r} runs {command}, which imports these unlisted modules"


@pytest.mark.parametrize("stage, command, deps, params", STAGES, ids=[row[0] for row in STAGES])
def test_stage_deps_list_no_code_the_command_does_not_run(stage, command, deps, params):
    runs = needed(command, params)
    code = [dep for dep in deps if dep.split("/")[0] in PROJECT_PACKAGES]
    extra = sorted(dep for dep in code if not any(covered(path, [dep]) for path in runs))
    assert extra == [], f"dvc.yaml stage {stage!r} lists code that {command} does not run for its results"


def test_the_sections_pretrain_does_not_read_live_apart_from_the_core():
    assert section_modules() == {"pixpro/config_data.py": {"data"},
                                 "pixpro/config_eval.py": {"extract", "probe", "evaluate", "retrieval"},
                                 "pixpro/config_finetune.py": {"finetune"}}
    pretrain = ["seed", "threads", "data.size", "pretrain"]
    assert validation_only(pretrain) == {"pixpro/config_eval.py", "pixpro/config_finetune.py"}
    assert validation_only(["retrieval"]) == {"pixpro/config_data.py", "pixpro/config_finetune.py"}
    assert not {"pixpro/config_eval.py", "pixpro/config_finetune.py"} & needed("stages/pretrain.py", pretrain)
    # ...and what only a skipped module imports is skipped with it (the data section's city list)
    assert "pixpro/data/cities.py" in needed("stages/pretrain.py", pretrain)
    assert "pixpro/data/cities.py" not in needed("stages/retrieval.py", ["retrieval"])


def test_a_section_module_the_code_imports_itself_is_needed_without_its_params():
    # finetune's probe head takes the extract and probe recipes (ExtractConfig, ProbeConfig): they
    # decide its numbers whether or not the stage's params read those sections
    assert "pixpro/finetune.py" in closure("stages/finetune.py")
    assert "pixpro/config_eval.py" in imported_files("pixpro/finetune.py")
    assert "pixpro/config_eval.py" in needed("stages/finetune.py", ["finetune"])


def test_editing_a_retrieval_or_finetune_bound_leaves_pretrain_up_to_date(tmp_path):
    # A copy whose pretrain stage is recorded as done (placeholder outputs, `dvc commit`); then
    # edit one range check of retrieval, one of finetune, then one line of the core config, and
    # ask `dvc status`.
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    (repo / "dvc.lock").unlink(missing_ok=True)
    for folder in ("data/prepared", "checkpoints/pretrain", "dvclive/pretrain/plots", "models"):
        shutil.rmtree(repo / folder, ignore_errors=True)
        (repo / folder).mkdir(parents=True)
    (repo / "data/prepared/manifest.csv").write_text("split,city,image,mask\n")
    (repo / "dvclive/pretrain/metrics.json").write_text("{}")
    (repo / "models/backbone.pt").write_bytes(b"placeholder")
    git_commit(repo, "copy")
    run_checked(["dvc", "commit", "--force", "pretrain"], repo, timeout=120)
    assert "up to date" in run_checked(["dvc", "status", "pretrain"], repo, timeout=120).stdout

    for module, check, edit in [("config_eval.py", r"self\.k >= 10", "self.k >= 11"),
                                ("config_finetune.py", r"self\.steps >= 1,", "self.steps >= 2,")]:
        checks = repo / "pixpro" / module
        text = checks.read_text()
        edited = re.sub(check, edit, text)
        assert edited != text
        checks.write_text(edited)
        assert "up to date" in run_checked(["dvc", "status", "pretrain"], repo, timeout=120).stdout, module

    core = repo / CORE
    core.write_text(core.read_text() + "\n# an edit\n")
    status = run_checked(["dvc", "status", "pretrain"], repo, timeout=120).stdout
    assert "modified:" in status and "pixpro/config.py" in status, status


def test_the_import_scan_sees_function_level_imports():
    # stages import pixpro inside their commands (so --help stays fast); the scan must see those.
    assert "pixpro/features.py" in imported_files("stages/extract.py")
