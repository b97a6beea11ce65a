"""The pipeline's locks can be trusted: every stage's DVC dependencies cover the library code its notebook
imports, directly or through other modules (imports inside functions included), so a change to any of it
makes `dvc status` list the stage."""

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from avguide.params import _value

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"


def module_file(name: str) -> Path | None:
    path = LIB / Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported(source: str, package: str) -> set[str]:
    """avguide modules (and `module.name` candidates) that `source`, inside `package`, imports anywhere."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "avguide"}


def code_cells(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    lines = [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def library_closure(notebook: Path) -> set[Path]:
    """Every library file that running `notebook` can import: its imports, theirs, and the packages above them."""
    todo, seen = imported(code_cells(notebook), "avguide"), set()
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))}
        package = name if path.name == "__init__.py" else ".".join(parts[:-1])
        todo |= imported(path.read_text(), package)
    return {p.relative_to(ROOT) for p in seen}


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, a `foreach` stage by its `do` body."""
    return {k: v.get("do", v) for k, v in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()}


def uncovered(stage: dict) -> list[str]:
    """Library files (and the notebook) the stage runs that none of its deps covers."""
    notebook = Path(re.search(r"notebooks/\S+\.ipynb", stage["cmd"]).group(0))
    deps = [Path(d) for d in stage["deps"]]
    need = {notebook} | library_closure(ROOT / notebook)
    return sorted(str(p) for p in need if not any(p == d or d in p.parents for d in deps))


@pytest.mark.parametrize("name", sorted(stages()))
def test_each_stage_depends_on_all_the_code_it_imports(name):
    missing = uncovered(stages()[name])
    assert not missing, f"dvc.yaml: stage {name} runs {missing} without listing them (or their folder) in deps"


def test_the_check_fails_when_a_stage_loses_an_import():
    stage = stages()["prepare"]
    assert uncovered(stage) == []
    for dep in [d for d in stage["deps"] if d.startswith("lib/")]:
        assert uncovered({**stage, "deps": [d for d in stage["deps"] if d != dep]}), dep


def test_imports_inside_functions_count():
    source = "def f():\n    from avguide.render import mouth\n"
    assert "avguide.render.mouth" in imported(source, "avguide")


def test_every_stage_keeps_its_executed_notebook():
    for name, stage in stages().items():
        written = re.findall(r"data/notebooks/\S+\.ipynb", stage["cmd"])
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]]
        assert written and written[0] in outs, name
        cached = [o for o in stage["outs"] if isinstance(o, dict) and written[0] in o]
        assert all(o[written[0]].get("cache", True) for o in cached), f"{name}: its notebook is not cached"


def test_evaluate_does_not_depend_on_the_experts_checkpoints():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    deps = [d.replace("${pretrain_expert.out}", params["pretrain_expert"]["out"]) for d in stages()["evaluate"]["deps"]]
    expert = params["pretrain_expert"]["out"]
    assert not any(expert.startswith(d.rstrip("/") + "/") or d == expert for d in deps)


def test_every_uncached_output_is_kept_in_git():
    """An output DVC does not cache must be in git, or a fresh clone can never be up to date (the expert's resume
    checkpoints were such an output: git-ignored and uncached, so `dvc status` listed the stage on every clone)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def resolve(path: str) -> str:
        return re.sub(r"\$\{((?!item)[a-z_.]+)\}", lambda m: str(_value(params, m.group(1))), path)

    for name, stage in stages().items():
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            if isinstance(out, dict) and not next(iter(out.values())).get("cache", True):
                path = resolve(next(iter(out)))
                if "${" in path:  # a foreach / matrix item
                    continue
                ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
                assert not ignored, f"dvc.yaml: stage {name} has an uncached output {path} that git ignores"
