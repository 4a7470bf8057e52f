"""Files that are no detlab checkpoint, given where one is expected, and the temporary files of interrupted writes.

Every loader (``load_checkpoint``, ``--resume``, ``Detector``, ``evaluate_checkpoint``, the classification loader and
the tools) says ``"<file>: not a detlab checkpoint (<what it is>)"`` in one line, never torch's advice to load with
``weights_only=False``, and never runs code a file holds."""

import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from det_helpers import TINY, tiny_config

from detlab.api import Detector
from detlab.classify.checkpoint import load_classifier
from detlab.engine import FORMAT, CheckpointError, Trainer, evaluate_checkpoint, load_checkpoint, save_checkpoint
from detlab.engine.checkpoint import CheckpointNotFoundError, atomic_save, remove_interrupted_writes
from detlab.errors import DetlabError

ROOT = Path(__file__).parents[2]


def touch_marker(path: str) -> None:
    Path(path).touch()


class RunsCode:
    """Unpickling this (weights_only=False) would call ``touch_marker``: the test of "no code runs"."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (touch_marker, (str(self.marker),))


def write_foreign(kind: str, path: Path) -> str:
    """Write a file of ``kind`` to ``path``; returns the regex of what the error must say it is."""
    if kind == "empty":
        path.write_bytes(b"")
        return r"the file is empty"
    if kind == "truncated":
        torch.save({"format": FORMAT, "kind": "training", "model": {"w": torch.ones(1000)}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return r"a truncated or damaged torch file"
    if kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
        return r"its bytes are not torch.save's format"
    if kind == "json":
        path.write_text(json.dumps({"format": FORMAT, "epoch": 3}))
        return r"a text file, not one torch.save wrote: it begins '\{\"format\": \"detlab.detec'"
    if kind == "tensor":
        torch.save(torch.ones(3), path)
        return r"torch.save of a Tensor, not of the dict of a detlab checkpoint"
    if kind == "torchvision state_dict":
        torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
        return r"a bare state_dict of \d+ tensors, e.g. torchvision's: weights without a config; .*model.weights"
    if kind == "pickled code":
        torch.save({"format": FORMAT, "kind": "training", "x": RunsCode(path.with_suffix(".ran"))}, path)
        return r"it holds Python objects \([\w.]*touch_marker\), which detlab never writes and never loads"
    raise ValueError(kind)


KINDS = ["empty", "truncated", "random bytes", "json", "tensor", "torchvision state_dict", "pickled code"]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(scope="module")
def trainer(tmp_path_factory) -> Trainer:
    return Trainer(tiny_config(tmp_path_factory.mktemp("resumer")), print_fn=lambda *a: None)


LOADERS = {
    "load_checkpoint": load_checkpoint,
    "Detector": lambda path: Detector.from_checkpoint(path, device="cpu"),
    "evaluate_checkpoint": lambda path: evaluate_checkpoint(path, device="cpu"),
    "classification loader": load_classifier,
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_foreign_file_is_named_and_said_what_it_is_by_every_loader(kind, tmp_path, trainer):
    path = tmp_path / "given.pt"
    what = write_foreign(kind, path)
    calls = {**LOADERS, "--resume": trainer.resume}
    for name, load in calls.items():
        with pytest.raises(CheckpointError) as raised:
            load(path)
        message = str(raised.value)
        assert message.startswith(f"{path}: not a detlab checkpoint ("), (name, message)
        assert re.search(what, message), (name, message)
        assert "weights_only" not in message and "\n" not in message, (name, message)
        # torch's message (which suggests weights_only=False) is not even chained behind ours
        error = raised.value
        assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__), name
    assert not path.with_suffix(".ran").exists()  # the pickled code never ran


@pytest.mark.parametrize("tool, argv", [
    ("eval_det", ["--checkpoint", "{path}", "--device", "cpu"]),
    ("predict", ["--checkpoint", "{path}", "--images", "{path}", "--device", "cpu"]),
])  # fmt: skip
def test_the_tools_print_one_line_for_a_foreign_checkpoint(tool, argv, tmp_path, capsys):
    path = tmp_path / "given.pt"
    write_foreign("pickled code", path)
    code = load_tool(tool).main([arg.format(path=path) for arg in argv] + ["--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {path}: not a detlab checkpoint (it holds Python objects"), err
    assert err.count("\n") == 1 and "weights_only" not in err


def test_train_det_resume_from_a_foreign_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "given.pt"
    write_foreign("random bytes", path)
    code = load_tool("train_det").main(["--set", *TINY, f"train.out_dir={tmp_path / 'run'}", "--resume", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {path}: not a detlab checkpoint (its bytes are not torch.save's format)\n"


def test_a_checkpoint_of_the_other_task_is_named_with_its_format(tiny_run, tmp_path):
    torch.save({"format": "detlab.classify/1", "model": {}}, tmp_path / "cls.pt")
    for load in (load_checkpoint, LOADERS["Detector"]):
        with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'cls.pt'}: not a detlab detection checkpoint \(a "
                                                  r"classification checkpoint, format 'detlab.classify/1': its "
                                                  r"backbone starts a detector as model.weights="):
            load(tmp_path / "cls.pt")
    with pytest.raises(CheckpointError, match=r"best.pt: not a detlab classification checkpoint \(format "
                                              r"'detlab.detect/2', expected 'detlab.classify/1'\)"):
        load_classifier(tiny_run / "best.pt")
    save_checkpoint({"epoch": 1}, tmp_path / "kindless.pt")
    with pytest.raises(CheckpointError, match="kindless.pt: kind None is none of training, inference"):
        load_checkpoint(tmp_path / "kindless.pt")
    torch.save({"format": "detlab.detect/9"}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=r"newer.pt: not a detlab detection checkpoint \(format "
                                              r"'detlab.detect/9' \(of a newer detlab\?\); detlab .* reads"):
        load_checkpoint(tmp_path / "newer.pt")


def test_a_missing_checkpoint_is_a_detlab_error_and_a_file_not_found_error(tmp_path):
    for load in (*LOADERS.values(),):
        with pytest.raises(CheckpointNotFoundError, match=f"checkpoint {tmp_path / 'none.pt'} does not exist"):
            load(tmp_path / "none.pt")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError) and issubclass(CheckpointNotFoundError, DetlabError)


# ---- temporary files of interrupted writes

KILLED_WRITER = """
import os, signal, sys, torch
import detlab.engine.checkpoint as checkpoint
checkpoint.atomic_save({"n": torch.tensor(1)}, sys.argv[1])
real = torch.save
def killed_after_writing(obj, f):  # the temporary file is written, the rename never comes
    real(obj, f)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = killed_after_writing
checkpoint.atomic_save({"n": torch.tensor(2)}, sys.argv[1])
"""


def test_a_killed_write_leaves_the_old_file_and_a_temporary_file_that_the_next_start_removes(tmp_path):
    target = tmp_path / "last.pt"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (left,) = [path for path in tmp_path.iterdir() if path != target]
    assert left.name.startswith("last.pt.") and left.name.endswith(".tmp")
    assert torch.load(target, weights_only=True)["n"] == 1  # the previous content, whole
    size = left.stat().st_size
    printed = []
    assert remove_interrupted_writes(tmp_path, ("last.pt",), printed.append) == [left]
    assert list(tmp_path.iterdir()) == [target]
    assert printed == [f"{tmp_path}: removed 1 temporary file of interrupted writes ({size / 1e6:.1f} MB: "
                       f"{left.name})"]


def test_a_new_run_removes_only_detlabs_own_leftovers_of_writers_that_are_gone(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    leftovers = [f"last.pt.{dead_pid}.0123abcd.tmp", "best.pt.89abcdef.tmp",  # earlier detlab's: no pid
                 f"log.jsonl.{dead_pid}.deadbeef.tmp"]
    kept = [f"last.pt.{os.getpid()}.0123abcd.tmp",  # a writer that still runs
            "last.pt.tmp", "notes.0123abcd.tmp", "last.pt.0123abcd.tmp.bak", "last.pt.0123ABCD.tmp",
            f"other.pt.{dead_pid}.0123abcd.tmp"]  # not a file the trainer writes
    for name in leftovers + kept:
        (tmp_path / name).write_bytes(b"x" * 1000)
    printed = []
    Trainer(tiny_config(tmp_path), print_fn=printed.append)
    assert sorted(path.name for path in tmp_path.glob("*.tmp*")) == sorted(kept)
    (line,) = [line for line in printed if "temporary" in line]
    assert line == (f"{tmp_path}: removed 3 temporary files of interrupted writes (0.0 MB: "
                    f"{', '.join(sorted(leftovers))})")


def test_the_classification_trainer_removes_its_leftovers_too(tmp_path):
    from detlab.classify import ClassifyConfig
    from detlab.classify import train as train_classifier

    run = tmp_path / "run"
    run.mkdir()
    atomic_save({"n": 1}, run / "last.pt")
    (run / "last.pt.99999999.0123abcd.tmp").write_bytes(b"x")  # pids are below 2**22 on Linux: no writer
    train_classifier(ClassifyConfig(synthetic_train=8, synthetic_val=4, image_size=32, epochs=1, batch_size=4,
                                    out_dir=str(tmp_path), name="run", progress=False, device="cpu"))
    assert not list(run.glob("*.tmp"))
    assert "removed 1 temporary file of interrupted writes" in (run / "train.log").read_text()
