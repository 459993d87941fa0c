"""The shape of the code: no import circle, and each layer imports only what it may
(docs/architecture.md). Read from the source with `ast`, every import counted, including
those inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import certbroker

ROOT = Path(certbroker.__file__).parent
# What an entry point may import of certbroker: the services and what they speak ("" is
# the package itself, for its version).
ENTRY_POINT_MAY_IMPORT = (
    *("", "cli", "worker_processes", "api", "web", "services", "domain", "ports", "config"),
    *("logs", "wiring", "agent"),
)
# The gateway agent runs where there is no store: it speaks to the broker over its
# websocket only, and shares the domain, crypto/ and the file installer.
AGENT_MAY_IMPORT = ("agent", "domain", "crypto", "logs", "certbroker.deploy.files")
ENTRY_POINTS = ("cli", "worker_processes", "api", "web")
# Adapters talk to the world. crypto/ (keys, CSRs, sealing, files) is a library that
# services and adapters share; it imports only domain/.
ADAPTERS = ("store", "ca", "dns", "challenges", "deploy", "notify")


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str) -> Iterator[tuple[str, ast.AST]]:
    """Every certbroker module `name` imports (`from a import b` counts as a.b when
    a.b is a module), with the node that imports it."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("certbroker"):
                    yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if not base.startswith("certbroker"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES else base), node


def _graph() -> dict[str, set[str]]:
    return {
        name: {target for target, _ in _imports(name) if target in MODULES and target != name}
        for name in MODULES
    }


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_the_imports_it_checks() -> None:
    graph = _graph()
    assert "certbroker.services.order_run" in graph["certbroker.services.issuance"]
    assert "certbroker.domain.errors" in graph["certbroker.domain.models"]
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_anywhere() -> None:
    circle = _circle(_graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_entry_points_call_services_only() -> None:
    """cli/, api/ and the worker processes import no adapter and never reach the store
    through a `.repo`: whatever they need is a service call every entry point can use."""
    wrong = []
    for name, path in MODULES.items():
        if _layer(name) not in ENTRY_POINTS:
            continue
        for target, node in _imports(name):
            if _layer(target) not in ENTRY_POINT_MAY_IMPORT:
                wrong.append(f"{path.name}:{node.lineno} imports {target}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "repo":
                wrong.append(f"{path.name}:{node.lineno} reaches the store through .repo")
    assert wrong == []


def test_the_domain_is_pure_and_adapters_stay_apart() -> None:
    """domain/ imports only itself (and the standard library, idna); an adapter imports
    domain/, ports.py, crypto/ and its own package, never another adapter; crypto/ only
    domain/ and itself; nothing beneath the services imports them."""
    wrong = []
    for name in MODULES:
        layer = _layer(name)
        for target, node in _imports(name):
            other = _layer(target)
            if layer == "domain" and other != "domain":
                wrong.append(f"{name}:{node.lineno} imports {target}")
            if layer in ADAPTERS and other in ADAPTERS and other != layer:
                wrong.append(f"{name}:{node.lineno} imports {target}")
            if layer == "crypto" and other not in ("crypto", "domain"):
                wrong.append(f"{name}:{node.lineno} imports {target}")
            if layer in (*ADAPTERS, "domain", "ports") and other in ("services", "cli", "wiring"):
                wrong.append(f"{name}:{node.lineno} imports {target} (points upwards)")
    assert wrong == []


def test_the_agent_needs_no_store() -> None:
    wrong = [
        f"{name}:{node.lineno} imports {target}"
        for name in MODULES
        if _layer(name) == "agent"
        for target, node in _imports(name)
        if _layer(target) not in AGENT_MAY_IMPORT and target not in AGENT_MAY_IMPORT
    ]
    assert wrong == []
    assert any(_layer(t) == "crypto" for t, _ in _imports("certbroker.agent.runner"))


def test_no_service_branches_on_the_challenge_type() -> None:
    """Challenge types differ only inside their solvers (ports.ChallengeSolver)."""
    solvers = {"certbroker.services.http01", "certbroker.services.dns01"}
    wrong = []
    for name, path in MODULES.items():
        if _layer(name) != "services" or name in solvers:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("http-01", "dns-01"):
                wrong.append(f"{path.name}:{node.lineno} names {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr in ("HTTP_01", "DNS_01"):
                wrong.append(f"{path.name}:{node.lineno} names ChallengeType.{node.attr}")
    assert wrong == []


def test_the_code_says_why_not_which_ticket() -> None:
    """Comments and docstrings say why; an issue number says nothing to the next reader
    (migrations, which record history, may name one)."""
    import re

    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(ROOT.rglob("*.py"))
        if "migrations" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bissues? \d+", line, re.IGNORECASE)
    ]
    assert found == []


# Entry points do not import each other: each calls the services, and what two of them
# share lives below them (domain/, services/). The edges left, to go with the store
# split: the console borrows the API's session check and problem mapping, the API
# builds the console into its app, and `serve` starts the API and the worker processes.
ENTRY_POINT_EDGES_LEFT = {
    ("certbroker.web.common", "certbroker.api.auth"),
    ("certbroker.web.common", "certbroker.api.problems"),
    ("certbroker.web.console", "certbroker.api.auth"),
    ("certbroker.api.app", "certbroker.web"),
    ("certbroker.cli.serve", "certbroker.api.server"),
    ("certbroker.cli.serve", "certbroker.worker_processes"),
}


def test_entry_points_do_not_import_each_other() -> None:
    found = {
        (name, target)
        for name in MODULES
        if _layer(name) in ENTRY_POINTS
        for target, _ in _imports(name)
        if _layer(target) in ENTRY_POINTS and _layer(target) != _layer(name)
    }
    assert found - ENTRY_POINT_EDGES_LEFT == set(), "a new import between entry points"
    assert ENTRY_POINT_EDGES_LEFT - found == set(), "gone: strike it from the list"


def test_the_ports_name_no_adapter() -> None:
    """ports.py says what services need in domain/ words; an adapter implements it, so
    a port that imports one (even only for a type) has it the wrong way round."""
    wrong = [
        f"ports.py:{node.lineno} imports {target}"
        for target, node in _imports("certbroker.ports")
        if _layer(target) in ADAPTERS
    ]
    assert wrong == []
