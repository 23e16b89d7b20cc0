"""search.schema is the one home of the attr names: no other module spells one out where it reads
or writes a trial's or a study's attrs."""

import ast
from pathlib import Path

import search.schema as schema

SEARCH = Path(__file__).resolve().parents[1] / "search"
ATTR_NAMES = {v for k, v in vars(schema).items() if k.startswith(("ATTR_", "STUDY_")) and isinstance(v, str)}
SETTERS = {"set_user_attr", "set_system_attr", "set_trial_user_attr", "set_trial_system_attr"}


def _attr_literals(source: str) -> list[tuple[int, str]]:
    """(line, name) of each attr name written as a string where attrs are read or written:
    `x.user_attrs["name"]`, `.get("name")` on attrs (or on a variable holding them),
    `set_user_attr("name", ...)`, `user_attrs={"name": ...}`."""
    tree = ast.parse(source)
    holders = set()  # local names bound to an attrs mapping: a = t.user_attrs
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and "attrs" in ast.unparse(node.value):
            holders.update(t.id for t in node.targets if isinstance(t, ast.Name))

    def attrs(expr: ast.AST) -> bool:
        return "attrs" in ast.unparse(expr) or (isinstance(expr, ast.Name) and expr.id in holders)

    hits = []
    for node in ast.walk(tree):
        keys: list[ast.AST] = []
        if isinstance(node, ast.Subscript) and attrs(node.value):
            keys = [node.slice]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in SETTERS or (
                node.func.attr in ("get", "pop", "setdefault") and attrs(node.func.value)
            ):
                keys = [node.args[0]]
        if isinstance(node, ast.Call):
            keys += [
                k
                for kw in node.keywords
                if kw.arg == "user_attrs" and isinstance(kw.value, ast.Dict)
                for k in kw.value.keys
                if k
            ]
        hits += [(k.lineno, k.value) for k in keys if isinstance(k, ast.Constant) and k.value in ATTR_NAMES]
    return hits


def test_the_finder_sees_each_way_of_spelling_an_attr_out():
    source = (
        "a = t.user_attrs\n"
        "x = a.get('architecture')\n"
        "y = t.user_attrs['n_params']\n"
        "trial.set_user_attr('worker', 1)\n"
        "study.enqueue_trial(p, user_attrs={'baseline': True})\n"
        "z = config['seed']\n"  # a config's own field, not an attr
        "w = t.user_attrs.get(ATTR_SEED)\n"
    )
    assert _attr_literals(source) == [(2, "architecture"), (3, "n_params"), (4, "worker"), (5, "baseline")]


def test_no_module_outside_schema_spells_out_an_attr_name():
    hits = [
        f"{path.relative_to(SEARCH.parent)}:{line}: {name!r}"
        for path in sorted(SEARCH.rglob("*.py"))
        if path.name != "schema.py"
        for line, name in _attr_literals(path.read_text(encoding="utf-8"))
    ]
    assert hits == []
