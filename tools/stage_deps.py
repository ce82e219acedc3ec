"""Write each dvc.yaml stage's code deps from the imports: exactly the project modules that
its ``python -m stages.<module>`` runs, so that editing a module reruns the stages that
import it, and no others.

    python tools/stage_deps.py           # rewrite the code deps in dvc.yaml, in place
    python tools/stage_deps.py --check   # exit 1, one line per stage whose code deps differ
    python tools/stage_deps.py --reruns  # for each module, its lines and the stages that list it

The imports are read with ``ast`` (nothing is imported): every import in a module counts,
those inside functions too, then the imports of the modules it imports. A package's
``__init__.py`` counts when it holds more than a docstring, since importing any module of
the package runs it. Only the ``- stages/...py`` lines of each ``deps`` list are written:
data deps, params, outs and comments stay as they are. The stage's own module comes
first, then the others in sorted order.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = "stages"
CODE_DEP = re.compile(rf"^(\s*)- ({PACKAGE}/\S+\.py)\s*(#.*)?$")


def module_file(module: str, root: Path = PROJECT) -> Path | None:
    """The file of a project module (``stages.x`` -> stages/x.py), or None for any other module."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    path = root.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(path: Path, root: Path = PROJECT) -> set[str]:
    """The project modules that the code in ``path`` imports, by name; ``from stages import x``
    names the module ``stages.x`` when there is one, else the package. Each package a module
    lies in is imported too (Python runs its ``__init__.py`` first)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise SystemExit(f"{path}: relative import; write it absolute (stages.x), which this reads")
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if (file := module_file(f"{node.module}.{alias.name}", root)) and file.is_file()
            )
    parents = {".".join(name.split(".")[:n]) for name in found for n in range(1, name.count(".") + 1)}
    return {module for module in found | parents if module_file(module, root)}


def runs_code(init: Path) -> bool:
    """Whether a package's ``__init__.py`` holds more than a docstring."""
    body = ast.parse(init.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def files_run_by(module: str, root: Path = PROJECT) -> list[str]:
    """The files of the project modules that ``python -m <module>`` runs, relative to
    ``root``: the module's own first, then the others sorted."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += imported_modules(module_file(current, root), root)
    files = {module_file(name, root) for name in seen}
    files = {file for file in files if file.name != "__init__.py" or runs_code(file)}
    own = module_file(module, root)
    return [own.relative_to(root).as_posix(), *sorted(file.relative_to(root).as_posix() for file in files - {own})]


def stage_bodies(dvc_yaml: Path) -> dict[str, dict]:
    """dvc.yaml's stages, a ``foreach`` stage by its ``do`` body (its deps are the same for every item)."""
    return {
        name: definition.get("do", definition)
        for name, definition in yaml.safe_load(dvc_yaml.read_text())["stages"].items()
    }


def stage_modules(dvc_yaml: Path) -> dict[str, str | None]:
    """``{stage: module}`` for every stage: the module of its ``python -m stages.<module>``
    command, or None for any other command."""
    modules = {}
    for name, body in stage_bodies(dvc_yaml).items():
        command = re.match(rf"python -m ({PACKAGE}(?:\.\w+)+)", body["cmd"])
        modules[name] = command.group(1) if command else None
    return modules


def listed_code_deps(dvc_yaml: Path) -> dict[str, list[str]]:
    """``{stage: [code deps]}`` as dvc.yaml lists them."""
    return {
        name: [dep for dep in body.get("deps", []) if re.fullmatch(rf"{PACKAGE}/\S+\.py", dep)]
        for name, body in stage_bodies(dvc_yaml).items()
    }


def stages_listing(dvc_yaml: Path) -> dict[str, list[str]]:
    """``{code file: [stages]}``: the stages whose deps list each file, in dvc.yaml's order,
    so the stages that an edit to the file reruns (and those downstream, when it changes
    their inputs)."""
    listing: dict[str, list[str]] = {}
    for stage, deps in listed_code_deps(dvc_yaml).items():
        for dep in deps:
            listing.setdefault(dep, []).append(stage)
    return listing


def common_code(dvc_yaml: Path) -> list[str]:
    """The code files that every stage lists: what an edit to reruns the whole pipeline."""
    listed = listed_code_deps(dvc_yaml)
    if not listed:  # no stages: no code that every stage runs, rather than an empty list that looks small
        raise SystemExit(f"{dvc_yaml}: no stages")
    return sorted(set.intersection(*(set(deps) for deps in listed.values())))


def line_count(file: str, root: Path = PROJECT) -> int:
    return len((root / file).read_text().splitlines())


def differences(dvc_yaml: Path, root: Path = PROJECT) -> list[str]:
    """One line per stage whose listed code deps are not the files it runs, or whose
    command is not a module of the package (so that its code cannot be read): a dvc.yaml
    with no stage to check is a difference too, never a pass."""
    listed, modules = listed_code_deps(dvc_yaml), stage_modules(dvc_yaml)
    if not modules:
        return [f"{dvc_yaml}: no stages"]
    lines = []
    for stage, module in modules.items():
        if module is None:
            lines.append(f"{stage}: its cmd is not `python -m {PACKAGE}.<module>`: its code deps cannot be read")
            continue
        run, have = set(files_run_by(module, root)), set(listed[stage])
        if run != have:
            lines.append(
                f"{stage}: dvc.yaml's deps miss {sorted(run - have) or 'nothing'} "
                f"and list {sorted(have - run) or 'nothing'} that it does not run"
            )
    return lines


def rewritten(text: str, wanted: dict[str, list[str]]) -> str:
    """dvc.yaml's ``text`` with each stage's ``- stages/...py`` deps lines replaced by
    ``wanted[stage]``, at the place of the first of them (at the end of its ``deps`` list
    when it has none)."""
    out: list[str] = []
    stage, in_deps, written, indent = None, False, False, ""

    def end_of_deps() -> None:
        if in_deps and stage in wanted and not written:
            out.extend(f"{indent}- {dep}\n" for dep in wanted[stage])

    for line in text.splitlines(keepends=True):
        if in_deps and not re.match(r"^\s+(- |#)", line):
            end_of_deps()
            in_deps = False
        if top := re.match(r"^(?:  (\w+)|\S.*):", line):
            stage, written = top.group(1), False
        elif re.match(r"^\s+deps:\s*(#.*)?$", line):
            in_deps, indent = True, re.match(r"^(\s*)", line).group(1) + "  "
        elif in_deps and stage in wanted and (code := CODE_DEP.match(line)):
            if not written:
                out.extend(f"{code.group(1)}- {dep}\n" for dep in wanted[stage])
                written = True
            continue
        out.append(line)
    end_of_deps()
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a stage's code deps differ")
    parser.add_argument("--reruns", action="store_true", help="change nothing; print who lists each module")
    parser.add_argument("--dvc-yaml", type=Path, default=PROJECT / "dvc.yaml")
    args = parser.parse_args(argv)
    if args.reruns:
        for file, stages in sorted(stages_listing(args.dvc_yaml).items()):
            print(f"{file} ({line_count(file)} lines): {', '.join(stages)}")
        common = common_code(args.dvc_yaml)
        print(f"every stage: {', '.join(common)} ({sum(map(line_count, common))} lines)")
        return 0
    if args.check:
        lines = differences(args.dvc_yaml)
        print("\n".join(lines) or f"{args.dvc_yaml.name}: every stage lists exactly the modules it runs")
        return 1 if lines else 0
    wanted = {stage: files_run_by(module) for stage, module in stage_modules(args.dvc_yaml).items() if module}
    text = args.dvc_yaml.read_text()
    new = rewritten(text, wanted)
    if new != text:
        args.dvc_yaml.write_text(new)
    left = differences(args.dvc_yaml)  # a stage with no code deps line yet cannot be placed
    print("\n".join(left) or f"{args.dvc_yaml.name}: {'rewritten' if new != text else 'already right'}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
