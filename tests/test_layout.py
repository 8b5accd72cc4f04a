"""The code's layout keeps its promises (docs/architecture.md): one owner for the task and for the methods, small
modules and functions, and imports that run one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import loratune

SRC = Path(loratune.__file__).parent
MODULES = sorted(SRC.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6
# The packages from the bottom up: a module may import its own package and the ones listed before it. The method
# table sits with the config, which takes the method names from it (both torch-free).
LAYERS = [
    {
        "errors",
        "schema",
        "formatting",
        "progress",
        "quiet",
        "config",
        "task",
        "thresholds",
        "model.methods",
        "model.targets",
    },
    {"data"},
    {"model"},
    {"scoring"},
    {"inference"},
    {"runs"},
    {"export", "report", "serving"},
    {"training"},
    {"tuning"},
    {"cli", "__init__", "__main__"},
]


def _name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def _layer(module: str) -> int:
    for depth, names in enumerate(LAYERS):
        if module in names or module.split(".")[0] in names:
            return depth
    raise AssertionError(f"{module} is in no layer of this test")


def _imports(path: Path) -> set[str]:
    """The loratune modules a module imports, at any depth of its code (imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("loratune"):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "loratune" else [node.module]
            found.update(n.removeprefix("loratune.") for n in names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("loratune.") for a in node.names if a.name.startswith("loratune."))
    return found


def _source(path: Path) -> str:
    """A module's code without its docstrings and comments, where names of things may appear in prose."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            body[0] = ast.Pass()
    return ast.unparse(tree)


def test_the_single_or_multi_label_decision_is_made_only_in_the_task_module():
    # Shapes and list-ness of labels, a multi_label flag, or a comparison with a task's name.
    decision = re.compile(
        r"\bndim\s*[=!]=|np\.ndim\(|(?<![.\w])is_list\(|\.multi_label\b|\bmulti_label\s*=|[=!]=\s*['\"](multi|single)['\"]"
        r"|_is_multi\b|is_multi_label"
    )
    offenders = [_name(p) for p in MODULES if p.name != "task.py" and decision.search(_source(p))]
    assert offenders == []


def _method_comparisons(code: str) -> list[str]:
    """Comparisons of something named method with a name or names (`method == "full"`, `method in ADAPTERS`)."""

    def named_method(node: ast.AST) -> bool:
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        return name == "method" or name.endswith("_method")

    def names(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names(e) for e in node.elts)
        return isinstance(node, ast.Name) and node.id.isupper()

    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(named_method(o) for o in operands) and any(names(o) for o in operands):
                found.append(ast.unparse(node))
    return found


def test_methods_are_compared_by_name_only_in_the_method_table():
    offenders = {
        _name(p): found for p in MODULES if p.name != "methods.py" and (found := _method_comparisons(p.read_text()))
    }
    assert offenders == {}


def test_the_checks_catch_what_they_look_for():
    # The two tests above pass on their own code only if they find the thing they forbid.
    assert re.search(r"\bndim\s*[=!]=", "if y.ndim == 2:") and re.search(r"\.multi_label\b", "m.multi_label")
    assert _method_comparisons('if cfg.lora.method == "full":\n    pass')
    assert _method_comparisons("if method in ADAPTER_METHODS:\n    pass")
    assert not _method_comparisons("for name, method in METHODS.items():\n    pass")


def test_no_module_is_over_400_lines():
    sizes = {_name(p): len(p.read_text().splitlines()) for p in MODULES}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_is_over_60_lines_or_takes_more_than_6_parameters():
    long, wide = {}, {}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{_name(path)}.{node.name}"
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long[where] = node.end_lineno - node.lineno + 1
                args = node.args
                params = [
                    a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")
                ]
                if len(params) > MAX_PARAMETERS:
                    wide[where] = len(params)
    assert (long, wide) == ({}, {})


def test_imports_run_one_way_with_no_circle():
    upward = []
    for path in MODULES:
        here = _name(path)
        for imported in _imports(path):
            target = (
                imported
                if (SRC / Path(*imported.split("."))).with_suffix(".py").exists()
                else imported.rsplit(".", 1)[0]
            )
            if _layer(target) > _layer(here):
                upward.append(f"{here} -> {target}")
    assert upward == []


def test_no_module_imports_itself_back_through_others():
    graph = {}
    for path in MODULES:
        here = _name(path)
        graph[here] = set()
        for imported in _imports(path):
            is_module = (SRC / Path(*imported.split("."))).with_suffix(".py").exists()
            target = imported if is_module else imported.rsplit(".", 1)[0]
            if target != here and (SRC / Path(*target.split("."))).with_suffix(".py").exists():
                graph[here].add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert circles == []


def test_every_package_says_what_lives_in_it():
    for init in SRC.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), init
