"""The shape of the code: imports go one way through the layers below, no function is longer
than 80 lines, and an import inside a function says why in a comment."""
import ast

import pytest

from conftest import ROOT

PKG = ROOT / "mnisttext"
# lowest first: a module may import only modules on earlier lines
LAYERS = [
    ["paths", "env"], ["codec"], ["text", "tokenizer"], ["data"], ["machine"], ["runtime", "muon"], ["kvcache"], ["int8"],
    ["gru"], ["model"], ["checkpoint"], ["packing"], ["classifier"], ["classifier_train"],
    ["sample"], ["tuning"], ["metrics"], ["render"], ["progress"], ["evaluate"], ["config"], ["train"],
    ["api"], ["serve"], ["cli.common"], ["cli.data_cmds", "cli.sample_cmds", "cli.eval_cmd",
                                         "cli.train_cmds", "cli.serve_cmd"], ["cli"],
    ["__main__"], ["__init__"],
]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}
MAX_LINES = 80


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        if name != "cli_old":
            yield name, path, ast.parse(path.read_text())


def internal_imports(name, tree):
    """(line, imported module, inside a function?) for imports of this package."""
    pkg = name.split(".")[:-1] if name not in ("cli",) else ["cli"]
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in funcs for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            for t in targets:
                yield node.lineno, t or "__init__", id(node) in inner


def test_every_module_has_a_layer():
    missing = [name for name, _, _ in modules() if name not in RANK]
    assert not missing, f"add these modules to LAYERS: {missing}"


def test_imports_go_one_way():
    bad = []
    for name, path, tree in modules():
        for line, target, _ in internal_imports(name, tree):
            t = target if target in RANK else target.rsplit(".", 1)[0]
            if t in RANK and RANK[t] >= RANK[name] and t != "__init__":
                bad.append(f"{path.name}:{line} imports {target}")
    assert not bad, "imports against the layers: " + "; ".join(bad)


def test_function_local_imports_say_why():
    bad = []
    for name, path, tree in modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and "#" not in lines[sub.lineno - 1]:
                        bad.append(f"{path.relative_to(ROOT)}:{sub.lineno}")
    assert not bad, "imports inside functions without a comment saying why: " + ", ".join(bad)


def test_functions_are_short():
    long = []
    for name, path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines: " + ", ".join(long)


@pytest.mark.parametrize("name", [n for n, _, _ in modules()])
def test_each_module_opens_with_a_docstring(name):
    tree = dict((n, t) for n, _, t in modules())[name]
    assert ast.get_docstring(tree), f"{name} has no module docstring"
