"""lib/ is layered: packages that show the pipeline, imports one way (from orchestration down to the
stages and from the stages down to ``core``), no import cycle, no module above ~500 lines, a function-
local import only of a package kept off the module's top, with its reason. Read with ``ast``: top-level
imports, function-local ones and ``importlib.import_module("lib...")`` strings."""
from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

from lib.core import paths

LIB = paths.PROJ_ROOT / "lib"
# each package may import only packages of a lower rank (world and train: neither imports the other)
RANK = {"core": 0, "modeling": 1, "data": 2, "vocab": 3, "world": 4, "train": 4, "eval": 5, "analysis": 6,
        "run": 7, "cli": 8}
MAX_LINES = 500


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(LIB.rglob("*.py")):
        parts = list(f.relative_to(LIB.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(mods: dict[str, Path]) -> list[tuple[str, str, int, bool]]:
    """(importer, imported module, line, function-local) for every import of a lib module."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name if name and name != "lib" else None

    found = []
    for m, f in mods.items():
        tree = ast.parse(f.read_text(encoding="utf-8"))
        top = set(map(id, tree.body))
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    p = pkg.split(".")
                    base = ".".join(p[:len(p) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names = [str(node.args[0].value)]
            targets = {resolve(n) for n in names if n.startswith("lib")} - {None, m}
            for t in sorted(targets):
                found.append((m, t, node.lineno, id(node) not in top))
    return found


def package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def entry_point(module: str) -> bool:
    """``python -m lib.pipeline`` / ``-m lib.train``: shims outside the layering."""
    return module.endswith("__main__") or module == "lib.pipeline"


def test_lib_holds_only_packages():
    assert sorted(p.name for p in LIB.glob("*.py")) == ["__init__.py"]
    for d in LIB.iterdir():
        if d.is_dir() and d.name != "__pycache__":
            init = d / "__init__.py"
            assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), f"{d} needs an __init__ docstring"


def test_imports_go_down_the_layers():
    mods = modules()
    wrong = []
    for a, b, line, _ in imports(mods):
        if entry_point(a):
            continue
        pa, pb = package(a), package(b)
        if pa == pb:
            continue
        if pb == "cli" or pb not in RANK or pa not in RANK or RANK[pb] >= RANK[pa]:
            wrong.append(f"{mods[a].relative_to(LIB.parent)}:{line} imports {b}")
    assert wrong == []


def test_no_import_cycle():
    mods = modules()
    edges = {m: set() for m in mods}
    for a, b, _, _ in imports(mods):
        if not (mods[b].name == "__init__.py" and a.startswith(b + ".")):
            edges[a].add(b)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(v: str, path: list[str]) -> bool:
        state[v] = 1
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                cycle.extend(path[path.index(w):] + [v, w] if w in path else [v, w])
                return True
            if w not in state and visit(w, path + [v]):
                return True
        state[v] = 2
        return False
    assert not any(visit(v, []) for v in mods if v not in state), " -> ".join(cycle)


def test_lib_imports_of_lib_are_at_module_top():
    """Function-local imports hid four cycles once; a lib module is imported at the top."""
    mods = modules()
    local = [f"{mods[a].relative_to(LIB.parent)}:{line} imports {b}" for a, b, line, is_local in imports(mods)
             if is_local and not entry_point(a)]
    assert local == []


def function_local_imports() -> list[tuple[str, int, str, bool]]:
    """(file, line, imported module, the line has a comment) for every import inside a function in lib."""
    found = []
    for m, f in modules().items():
        if entry_point(m):
            continue
        text = f.read_text(encoding="utf-8")
        commented = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(text).readline)
                     if t.type == tokenize.COMMENT}
        seen = set()
        for fn in ast.walk(ast.parse(text)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in seen:
                        seen.add(id(node))
                        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                                 else ["." * node.level + (node.module or "")])
                        for name in names:
                            found.append((str(f.relative_to(LIB.parent)), node.lineno, name, node.lineno in commented))
    return found


def test_no_standard_library_import_inside_a_function():
    """The standard library is imported at the module's top: a local import of it saves nothing."""
    local = [f"{f}:{line} imports {name}" for f, line, name, _ in function_local_imports()
             if name.split(".")[0] in sys.stdlib_module_names]
    assert local == []


def test_function_local_imports_say_why():
    """What stays local (a heavy or optional package, or one a light layer keeps off its top
    imports) says why on its (first) line."""
    bare = [f"{f}:{line} imports {name}" for f, line, name, has_comment in function_local_imports() if not has_comment]
    assert bare == []


def test_modules_stay_small():
    big = {m: n for m, f in modules().items() if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}


def test_no_private_name_is_used_outside_its_module():
    mods = modules()
    used = []
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lib"):
                used += [f"{m} imports {node.module}.{a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__")]
    assert used == []
