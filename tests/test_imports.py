"""Which of scitq's packages may import which, read from the source with ast (nothing of scitq is
imported to build the graph, so a lazy import inside a function counts as much as a top one)."""
import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "scitq"

# The nodes of the graph: each package directly under scitq/ (a module of it belongs to it),
# and each shared module there (client, config, errors, status, trust, taskspec...).
PACKAGES = tuple(sorted(f"scitq.{p.parent.name}" for p in ROOT.glob("*/__init__.py")))

# (importer, imported) pairs of packages that must not exist, directly or through others.
FORBIDDEN = {
    "scitq.cli": {"scitq.server"},
    "scitq.client": {"scitq.server"},
    "scitq.worker": {"scitq.server", "scitq.providers", "scitq.deploy", "scitq.cli"},
    "scitq.server": {"scitq.worker"},
    "scitq.providers": {"scitq.server"},
    "scitq.deploy": {"scitq.server"},
}

# Modules allowed to import a package their own may not, and why.
EXCEPTIONS = {
    ("scitq.cli.servers", "scitq.server"): "the `server` and `up` commands start a server",
}


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules():
    """{module name: path} of every module under scitq/."""
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _absolute(node, name, path):
    """The absolute module an ImportFrom names (relative ones resolved against `name`)."""
    if not node.level:
        return node.module
    base = name.split(".")
    if path.name != "__init__.py":
        base.pop()
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node, name, path):
    """The modules of scitq one import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    source = _absolute(node, name, path)
    # `from scitq.server import lifecycle` loads the module scitq.server.lifecycle.
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in modules() else source
            for a in node.names]


@cache
def imports():
    """[(importer, imported, line)] of every import of a scitq module by a scitq module."""
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.extend((name, target, node.lineno) for target in _targets(node, name, path)
                             if target == "scitq" or target.startswith("scitq."))
    return found


def package(module):
    for p in PACKAGES:
        if module == p or module.startswith(p + "."):
            return p
    return module


def graph(skip_exceptions=False):
    """{package: {package it imports: (importer, imported, line) of one such import}}."""
    edges = {}
    for importer, imported, line in imports():
        a, b = package(importer), package(imported)
        if a == b or (skip_exceptions and (importer, b) in EXCEPTIONS):
            continue
        edges.setdefault(a, {}).setdefault(b, (importer, imported, line))
    return edges


def path_between(edges, start, goal):
    """The shortest chain of imports from package start to package goal, or None."""
    seen, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for other in edges.get(node, {}):
                if other not in seen:
                    seen[other] = node
                    nxt.append(other)
        frontier = nxt
    if goal not in seen or goal == start:
        return None
    chain, node = [], goal
    while seen[node] is not None:
        chain.append(edges[seen[node]][node])
        node = seen[node]
    return chain[::-1]


def _said(chain):
    return " -> ".join(f"{importer} imports {imported} (line {line})"
                       for importer, imported, line in chain)


def test_the_graph_is_read_from_the_source():
    """The reader finds imports of every form, lazy ones included."""
    found = {(a, b) for a, b, _ in imports()}
    assert ("scitq.cli.servers", "scitq.server") in found          # from scitq.server import x
    assert ("scitq.client", "scitq.config") in found              # from scitq import config
    assert ("scitq.cli.__main__", "scitq.cli") in found
    assert len(modules()) > 50
    assert {"scitq.cli", "scitq.server", "scitq.worker", "scitq.providers", "scitq.deploy"} <= set(PACKAGES)
    assert package("scitq.server.api.tasks") == "scitq.server" and package("scitq.client") == "scitq.client"


def test_no_cycle_between_packages():
    edges = graph()
    cycles = {}
    for a in edges:
        for b in edges[a]:
            back = path_between(edges, b, a)
            if back:
                chain = [edges[a][b], *back]
                cycles.setdefault(frozenset(package(i) for i, _, _ in chain), _said(chain))
    assert not cycles, "import cycles between scitq's packages:\n" + "\n".join(sorted(cycles.values()))


def test_no_forbidden_direction():
    """A package reaches no forbidden one, directly or through another (the listed exceptions
    aside: they are the only doors)."""
    edges = graph(skip_exceptions=True)
    wrong = []
    for a, banned in FORBIDDEN.items():
        for b in sorted(banned):
            chain = path_between(edges, a, b)
            if chain:
                wrong.append(f"{a} must not import {b}: {_said(chain)}")
    assert not wrong, "\n".join(wrong)


def test_exceptions_are_real_and_needed():
    """Each exception names an import that exists and that the rules would refuse otherwise."""
    found = {(a, package(b)) for a, b, _ in imports()}
    for (importer, target), why in EXCEPTIONS.items():
        assert (importer, target) in found, f"{importer} no longer imports {target}: drop it ({why})"
        assert target in FORBIDDEN.get(package(importer), ()), f"{importer}: not an exception"


def test_the_server_package_imports_nothing_that_imports_it_back():
    edges = graph()
    init = modules()["scitq.server"]
    back = []
    for importer, imported, line in imports():
        if importer != "scitq.server" or package(imported) == "scitq.server":
            continue
        chain = path_between(edges, package(imported), "scitq.server")
        if chain:
            back.append(f"{init.name}:{line} imports {imported}, and {_said(chain)}")
    assert not back, "\n".join(back)


def test_recruitment_policy_imports_without_flask():
    """The policy is pure: a fresh interpreter imports it and has no Flask nor database."""
    code = ("import sys; import scitq.server.recruit.policy as p; "
            "print(sorted(m for m in ('flask', 'sqlalchemy', 'werkzeug') if m in sys.modules)); "
            "print(p.plan.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT.parent, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "plan"]
