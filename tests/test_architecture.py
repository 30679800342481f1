"""The shape of docs/architecture.md, enforced: who may import what.

The rules (docs/architecture.md, "Layers"):

    cli -> client | server | tools -> io -> proto
    client | server -> storage;  testing -> server, client, storage, io, proto

``proto`` is sans-IO (no sockets, clock, files, threads or global randomness) and
imports only ``errors``, ``config``, ``checksum``, ``_records`` and itself;
``storage`` knows no protocol; the client imports no ``socket`` (io/ opens and
works its sockets); the CLI never imports ``proto``, ``testing`` (it reaches the
link model through ``tools``) or ``socket``; only ``checksum`` imports xxhash
and only ``cli/progress.py`` imports tqdm.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ftransfer"
CORE_STDLIB = {
    "__future__",
    "bisect",
    "collections",
    "enum",
    "hashlib",
    "heapq",
    "hmac",
    "struct",
    "typing",
    "cryptography",
}
"""Pure computation only (typing only under TYPE_CHECKING: see _records.py);
cryptography for the AEAD that seals UDP datagrams (proto/udp/sealed.py)."""
CORE_FORBIDDEN = {"asyncio", "socket", "selectors", "time", "os", "pathlib", "tqdm", "random"}
CORE_ALLOWED = ("ftransfer.proto", "ftransfer.errors", "ftransfer.config", "ftransfer.checksum")
CORE_ALLOWED_EXACT = {
    "ftransfer._records",
    "ftransfer._records.Record",
    "ftransfer._records.factory",
}


def imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative ones resolved)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = (*parts[:-1], "__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(parts[: len(parts) - node.level]) if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def modules() -> dict[str, set[str]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = str(path.relative_to(PACKAGE.parent).with_suffix("")).replace("/", ".")
        out[name.removesuffix(".__init__")] = imports(path)
    return out


MODULES = modules()


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_layout_has_the_packages_of_the_design() -> None:
    for package in ("proto", "proto.tcp", "proto.udp", "proto.tftp", "io", "storage", "server"):
        assert f"ftransfer.{package}" in MODULES, package
    for package in ("client", "cli", "testing", "tools"):
        assert f"ftransfer.{package}" in MODULES, package
    assert {"ftransfer.proto.machine", "ftransfer.server.operations"} <= set(MODULES)
    assert {"ftransfer.storage.base", "ftransfer.storage.local", "ftransfer.storage.memory"} <= set(
        MODULES
    )
    assert "ftransfer.testing.netem" in MODULES and "ftransfer.testing.sim" in MODULES


@pytest.mark.parametrize("module", sorted(m for m in MODULES if within(m, "ftransfer.proto")))
def test_core_touches_no_io(module: str) -> None:
    for name in MODULES[module]:
        top = name.split(".")[0]
        assert top not in CORE_FORBIDDEN, f"{module} imports {name}"
        if top == "ftransfer":
            ok = name.startswith(CORE_ALLOWED) or name in CORE_ALLOWED_EXACT
            assert ok, f"{module} imports {name}"
        else:
            assert top in CORE_STDLIB, f"{module} imports {name}"


def test_only_progress_imports_tqdm_and_only_checksum_imports_xxhash() -> None:
    for module, names in MODULES.items():
        tops = {n.split(".")[0] for n in names}
        if "tqdm" in tops:
            assert module == "ftransfer.cli.progress"
        if "xxhash" in tops:
            assert module == "ftransfer.checksum"


LAYERS = [
    (
        "ftransfer.proto",
        (
            "ftransfer.io",
            "ftransfer.storage",
            "ftransfer.client",
            "ftransfer.server",
            "ftransfer.cli",
        ),
    ),
    (
        "ftransfer.io",
        ("ftransfer.storage", "ftransfer.client", "ftransfer.server", "ftransfer.cli"),
    ),
    (
        "ftransfer.storage",
        (
            "ftransfer.proto",
            "ftransfer.io",
            "ftransfer.client",
            "ftransfer.server",
            "ftransfer.cli",
        ),
    ),
    (
        "ftransfer.client",
        ("ftransfer.server", "ftransfer.cli", "ftransfer.testing", "ftransfer.tools", "socket"),
    ),
    (
        "ftransfer.server",
        ("ftransfer.client", "ftransfer.cli", "ftransfer.testing", "ftransfer.tools"),
    ),
    (
        "ftransfer.cli",
        ("ftransfer.proto", "ftransfer.io", "ftransfer.storage", "ftransfer.testing", "socket"),
    ),
    ("ftransfer.testing", ("ftransfer.cli", "ftransfer.tools")),
]


@pytest.mark.parametrize(("layer", "forbidden"), LAYERS)
def test_dependencies_point_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    for module, names in MODULES.items():
        if within(module, layer):
            bad = [n for n in names if any(within(n, f) for f in forbidden)]
            assert not bad, f"{module} imports {bad}"


def test_every_module_is_in_a_layer() -> None:
    layers = {layer for layer, _forbidden in LAYERS} | {"ftransfer.tools"}
    loose = {"ftransfer", "ftransfer.__main__", "ftransfer._records", "ftransfer.errors"}
    loose |= {"ftransfer.config", "ftransfer.checksum"}
    for module in MODULES:
        assert module in loose or any(within(module, layer) for layer in layers), module


@pytest.mark.parametrize(
    "package", ["proto", "io", "storage", "server", "client", "cli", "testing", "tools"]
)
def test_every_module_opens_with_a_theory_of_operation(package: str) -> None:
    for path in (PACKAGE / package).rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        short = path.name == "__init__.py" or package in ("cli", "tools")
        assert len(doc) > (40 if short else 200), f"{path} lacks a theory of operation"
