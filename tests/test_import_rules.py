"""The import rules of DESIGN.md, read from the source: package arrows, monitoring's two floors, no file cycles.

Every `import` of our packages counts, at module level or inside a function (a lazy import is still a dependency);
only imports under `if TYPE_CHECKING:` are left out, since they never run.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("adapters", "bot", "training", "monitoring", "config")

ALLOWED = {
    "adapters": {"adapters"},
    "bot": {"adapters", "bot", "monitoring"},
    "training": {"adapters", "bot", "monitoring", "training"},
    "monitoring": {"adapters", "bot", "monitoring"},
    "config": {"config"},
}
"""Which of our top-level packages each may import (DESIGN.md's layout table)."""

MONITORING_GROUND = (
    "monitoring.logging",
    "monitoring.redaction",
    "monitoring.metrics",
    "monitoring.wandb_server",
    "monitoring.run_store",
    "monitoring.progress",
)
"""monitoring's ground floor: logging (with redaction and progress), metrics, the W&B-server check and the run
directory format. They sit on adapters and import nothing of bot, so bot may use them without a cycle."""

BOT_MAY_USE_FROM_MONITORING = MONITORING_GROUND
"""What bot takes from monitoring: only its ground floor."""

KNOWN_EXCEPTIONS = {
    # The daemon's scheduled daily report renders through the report package, which reads the ledger: the one
    # place the serving side uses a monitoring module above the ground floor; it imports no file that imports it..
    ("bot.sinks.daily_report", "monitoring.reports.ledger"),
}

HEAVY = ("torch", "gymnasium", "shap", "stable_baselines3")
"""Never imported by the serving side (the daemon runs on onnxruntime + numpy)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Yield every module name an import in `tree` names (relative imports resolved)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            yield base
            for alias in node.names:
                # `from pkg import submodule` depends on the submodule.
                yield f"{base}.{alias.name}"
        stack.extend(ast.iter_child_nodes(node))


def _our_files(packages: tuple[str, ...] = ("adapters", "bot", "training", "monitoring")) -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in packages
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }


def _graph() -> dict[str, set[str]]:
    files = _our_files(OURS)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for target in _imports(tree, name, path.name == "__init__.py"):
            if (target in files and target != name) or target.split(".")[0] in HEAVY:
                targets.add(target)
        graph[name] = targets
    return graph


GRAPH = _graph()


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_graph_covers_the_project() -> None:
    assert {"bot.engine.core", "adapters.types", "training.train", "monitoring.metrics"} <= set(GRAPH) | {
        n for n in GRAPH if n.startswith(("bot.engine.core", "adapters.types"))
    }
    assert len(GRAPH) > 50


def test_packages_import_only_along_the_arrows() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _top(target) in OURS and _top(target) not in ALLOWED[_top(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_monitoring_logging_and_metrics_import_nothing_of_bot() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith(MONITORING_GROUND)
        for target in targets
        if _top(target) == "bot"
    ]
    assert not wrong, "\n".join(wrong)


def test_bot_takes_only_logging_and_metrics_from_monitoring() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _top(module) == "bot"
        for target in targets
        if _top(target) == "monitoring"
        and not target.startswith(BOT_MAY_USE_FROM_MONITORING)
        and (module, target) not in KNOWN_EXCEPTIONS
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["adapters", "bot", "monitoring"])
def test_the_serving_side_never_imports_torch(package: str) -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _top(module) == package
        for target in targets
        if _top(target) in HEAVY
    ]
    assert not wrong, "\n".join(wrong)


def test_the_paper_and_live_daemon_start_without_pandas_or_torch() -> None:
    """The daemon's modules, as `ai-trading bot mode=paper` loads them, pull in neither pandas (74 MB; the daily
    report imports it when its first report is due) nor torch."""
    probe = (
        "import sys; import bot.__main__, bot.daemon, bot.wiring, adapters.ccxt.adapter; "
        "heavy = sorted(m for m in ('pandas', 'torch', 'gymnasium', 'training') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _cycle() -> list[str] | None:
    """Return one import cycle between files, or None."""
    colour: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for target in sorted(GRAPH.get(node, ())):
            if target not in GRAPH:
                continue
            if colour.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in colour and (found := visit(target)) is not None:
                return found
        path.pop()
        colour[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in colour and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_between_files() -> None:
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle or [])


def test_every_package_says_what_lives_there_and_what_it_imports() -> None:
    packages = [path for path in _our_files((*OURS,)).values() if path.name == "__init__.py"]
    assert len(packages) >= 15
    docstrings = {
        str(path.relative_to(ROOT)): ast.get_docstring(ast.parse(path.read_text())) or "" for path in packages
    }
    silent = [path for path, text in docstrings.items() if len(text) < 40]
    assert not silent, "no docstring saying what lives there: " + ", ".join(silent)
    no_rule = [path for path, text in docstrings.items() if "import" not in text.lower()]
    assert not no_rule, "no word on what the package imports: " + ", ".join(no_rule)


def test_no_module_keeps_a_re_export_list() -> None:
    """Importers import a name from the module that defines it; no `__all__` lists another module's names."""
    with_all = [
        name
        for name, path in _our_files().items()
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    ]
    assert not with_all, ", ".join(with_all)


def _top_level_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names a module defines, names it imports) at its top level, inside top-level if/try/with blocks too."""
    defined: set[str] = set()
    imported: set[str] = set()
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            imported.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            stack.extend(node.body)
            stack.extend(getattr(node, "orelse", []))
            stack.extend(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                stack.extend(handler.body)
    return defined, imported


def test_names_are_imported_from_the_module_that_defines_them() -> None:
    """No module passes on a name it imported: `from a import X` where `a` only imports X is a hidden re-export."""
    files = _our_files(("adapters", "bot", "training", "monitoring", "tests"))
    trees = {name: ast.parse(path.read_text()) for name, path in files.items()}
    names = {name: _top_level_names(tree) for name, tree in trees.items()}
    passed_on = [
        f"{files[name].relative_to(ROOT)}:{node.lineno} takes {alias.name} from {node.module}"
        + (" (which imports it)" if alias.name in names[node.module][1] else " (which does not define it)")
        for name, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and not node.level and node.module in files
        for alias in node.names
        if f"{node.module}.{alias.name}" not in files and alias.name not in names[node.module][0]
    ]
    assert not passed_on, "; ".join(passed_on)


def _classes() -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(module, class) -> its bases as (module they come from, name); builtins come from ``builtins``."""
    classes: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name, path in _our_files().items():
        tree = ast.parse(path.read_text())
        imported = {
            alias.asname or alias.name: (node.module or "", alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases = []
                for base in node.bases:
                    base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
                    if isinstance(base, ast.Subscript):  # Generic[T], Protocol[T]
                        base_name = getattr(base.value, "id", getattr(base.value, "attr", ""))
                    bases.append(imported.get(base_name, (name, base_name)))
                classes[(name, node.name)] = bases
    return classes


EXTENSION_POINTS = {
    # Training's callback base: every hook a no-op, made to be subclassed (as SB3's BaseCallback).
    ("training.callbacks", "Callback"),
    # The daemon's `mqtt` config section is the bridge's own config plus `enabled` and `bot_id`; Hydra's schema
    # for the section is flat, so the section's dataclass extends the bridge's rather than nesting it.
    ("bot.sinks.mqtt", "MqttConfig"),
    # A round trip's result, declared once (fields only, no behaviour): the ledger's ClosedTrade and the trade
    # events (bot.events.RoundTrip) extend it, so the record has one shape (issue 10).
    ("adapters.types", "TradeResult"),
}
"""Classes of ours that other files may extend."""


def test_no_class_is_split_across_files_by_inheritance() -> None:
    """A class of ours extends a class of ours from another file only for exceptions and protocols.

    Splitting one class over files as a stack of subclasses (`Engine(EngineCommands(EngineBase))`) hides where a
    method lives; composition (an owned object behind a narrow protocol) is the rule.
    """
    classes = _classes()

    def is_exception_or_protocol(key: tuple[str, str], seen: frozenset[tuple[str, str]] = frozenset()) -> bool:
        name = key[1]
        if name == "Protocol" or name.endswith(("Error", "Exception", "Warning")):
            return True
        if key not in classes or key in seen:
            return False
        return any(is_exception_or_protocol(base, seen | {key}) for base in classes[key])

    split = [
        f"{module}.{name}({base_module}.{base_name})"
        for (module, name), bases in classes.items()
        for base_module, base_name in bases
        if (base_module, base_name) in classes
        and base_module != module
        and not is_exception_or_protocol((base_module, base_name))
        and (base_module, base_name) not in EXTENSION_POINTS
    ]
    assert not split, "\n".join(split)


def test_the_readme_layout_names_files_that_exist() -> None:
    """The README's Layout section points a newcomer at files; each one it names must be there."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout\n") : readme.index("\n## ", readme.index("## Layout\n") + 1)]
    named = set(re.findall(r"`([a-z_]+/[\w/.-]*)`", section))
    assert len(named) >= 20
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, "README Layout names missing paths: " + ", ".join(missing)
    for change in ("A new risk limit", "A new exchange", "A new report", "A new sink"):
        assert change in section


CLOCK_READERS = {
    "bot.clock",  # the one utc_now
    "monitoring.run_store",  # monitoring's ground floor, below bot: names new run directories by the wall clock
}
"""Modules that read the wall clock themselves; everything else calls bot.clock.utc_now (one clock to replace)."""


def test_the_wall_clock_is_read_in_one_place() -> None:
    readers = sorted(
        name
        for name, path in _our_files().items()
        if name not in CLOCK_READERS and re.search(r"datetime\.(now|utcnow|today)\(", path.read_text())
    )
    assert not readers, "read the wall clock through bot.clock.utc_now: " + ", ".join(readers)
