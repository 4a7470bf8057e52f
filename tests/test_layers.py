"""The layers of the architecture (imports point down only) and the one-place rules, checked on the sources."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DETLAB = ROOT / "detlab"


def imports_of(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_engine_never_imports_the_api_nor_a_concrete_model_file():
    for path in sources(DETLAB / "engine"):
        imported = imports_of(path)
        assert "detlab.api" not in imported, path
        # the family table (detlab.models) only: detlab.models.yolov3 & co. are the families' business
        concrete = {name for name in imported if name.startswith("detlab.models.")
                    and name.split(".")[2] not in {"MODELS", "build_model", "input_pipeline", "architecture",
                                                   "architecture_differences", "model_family", "input_size",
                                                   "SHARED_ARCHITECTURE_KEYS"}}
        assert not concrete, (path, concrete)


def test_ops_import_nothing_else_from_detlab():
    for path in sources(DETLAB / "ops"):
        outside = {name for name in imports_of(path) if name.startswith("detlab") and not name.startswith("detlab.ops")}
        assert not outside, (path, outside)


@pytest.mark.parametrize("folder", ["data", "eval", "heads", "necks"])
def test_lower_layers_never_import_models_engine_or_api(folder):
    for path in sources(DETLAB / folder):
        upward = {name for name in imports_of(path)
                  if name.startswith(("detlab.models", "detlab.engine", "detlab.api", "detlab.classify",
                                      "detlab.deploy"))}
        assert not upward, (path, upward)


def test_deploy_sits_between_the_api_and_the_models():
    """detlab.deploy (export) knows the concrete families; the api calls it; nothing below the api calls it."""
    for folder in ("engine", "models", "heads", "necks", "ops", "data", "eval", "classify", "backbones"):
        for path in sources(DETLAB / folder):
            assert not {name for name in imports_of(path) if name.startswith("detlab.deploy")}, path
    for path in sources(DETLAB / "deploy"):
        assert not {name for name in imports_of(path) if name.startswith(("detlab.api", "detlab.engine"))}, path


def test_detlab_owns_its_detectors_and_never_imports_torchvisions_detection_models():
    """torchvision supplies backbones, weights and (on request, DETLAB_OPS=torchvision) ops; the detectors are
    detlab's. Its detector checkpoints are reached by weights name (torchvision.models.get_weight)."""
    for path in sources(DETLAB):
        borrowed = {name for name in imports_of(path) if name.startswith("torchvision.models.detection")}
        assert not borrowed, (path, borrowed)
        assert "torchvision.models.detection" not in path.read_text(), path


def test_optimizers_schedules_and_checkpoint_writes_exist_once():
    """Detection and classification share the engine's optimizer builder, LR schedule and atomic writer."""
    owners = {"torch.optim.SGD(": "engine/optim.py", "torch.optim.Adam(": "engine/optim.py",
              "torch.optim.AdamW(": "engine/optim.py",
              "os.fsync(": "engine/checkpoint.py", "os.replace(": "engine/checkpoint.py",
              "torch.autocast(": "engine/runtime.py", "GradScaler(": "engine/runtime.py"}
    for path in sources(DETLAB):
        text = path.read_text()
        for call, owner in owners.items():
            if call in text:
                assert path == DETLAB / owner, f"{call} in {path.relative_to(ROOT)}, expected only in {owner}"
    # both trainers schedule with the engine's lr_schedule
    for trainer in ("engine/trainer.py", "classify/trainer.py"):
        assert "detlab.engine.optim.lr_schedule" in imports_of(DETLAB / trainer), trainer
        assert "detlab.engine.optim.build_optimizer" in imports_of(DETLAB / trainer), trainer


def test_figures_never_touch_matplotlibs_global_state():
    for path in [*sources(DETLAB), *sources(ROOT / "tools")]:
        imported = imports_of(path)
        assert "matplotlib.use(" not in path.read_text(), path
        assert "matplotlib.pyplot" not in imported and "matplotlib.figure.Figure" not in imported \
            or path == DETLAB / "plotting.py", path
    # predict draws with the drawing helper, not with the training logger
    assert "detlab.engine.logger" not in imports_of(ROOT / "tools" / "predict.py")
    assert "detlab.plotting.draw_boxes" in imports_of(ROOT / "tools" / "predict.py")
