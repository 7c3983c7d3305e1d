"""The design rule "one module per stage of the flow; no stage imports a later one" (docs/design.md),
checked on the source: every seqcast module imports only modules earlier in FLOW."""

from __future__ import annotations

import ast
import pathlib

import seqcast

# The flow of docs/design.md, earliest first. errors (exceptions), defaults (the parameters' defaults,
# presets and scoring names the CLI's parser shows) and native (compiled kernels, no seqcast imports)
# sit under everything; artifacts (save/load) under the stages that save.
FLOW = [
    "errors", "defaults", "native", "data", "features", "windows", "artifacts", "models", "training", "ensemble",
    "parallel", "forecaster", "conformal", "baselines", "metrics", "backtest", "tuning", "many", "plots",
    "report", "cli",
]
# Not stages: the package itself (its __init__ re-exports the API; ``from seqcast import __version__``
# reads the package's version), its entry point, and the bundled data files.
NOT_STAGES = {"__init__", "__main__", "__version__", "datasets"}
SOURCE = pathlib.Path(seqcast.__file__).parent


def seqcast_imports(path: pathlib.Path) -> set[str]:
    """The seqcast modules ``path`` imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == "seqcast":
                found.update([node.module.split(".")[0]] if node.level and node.module else [a.name for a in node.names])
            elif node.module and node.module.startswith("seqcast."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("seqcast."))
    return found - NOT_STAGES


def test_every_module_is_a_stage_of_the_flow():
    modules = {path.stem for path in SOURCE.glob("*.py")} - NOT_STAGES
    assert modules == set(FLOW)


def test_no_stage_imports_a_later_one():
    for stage in FLOW:
        later = set(FLOW[FLOW.index(stage):])
        assert not seqcast_imports(SOURCE / f"{stage}.py") & later, stage


def test_the_checker_sees_each_import_form(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from .data import load_csv\nfrom . import windows\nfrom seqcast.models import StackedRNN\n"
        "import seqcast.training\nfrom seqcast import native, __version__\n"
        "def f():\n    from .report import write_report\n"
    )
    assert seqcast_imports(module) == {"data", "windows", "models", "training", "native", "report"}
