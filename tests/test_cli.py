"""Every tool: an expected error is one line ``error: ...`` on stderr and exit code 2; any other keeps its traceback."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from detlab.cli import tool
from detlab.config import ConfigError
from detlab.engine.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted((ROOT / "tools").glob("*.py"))


def test_expected_errors_are_one_line_and_exit_code_2(capsys):
    @tool
    def refuses(argv):
        raise argv

    for error, message in [(ConfigError("train.lr = -1.0 must be greater than 0"), None),
                           (CheckpointError("x.pt: not a detlab checkpoint"), None),
                           (FileNotFoundError(2, "No such file or directory", "nowhere.json"), "nowhere.json"),
                           (FileExistsError("out/ already holds crops"), None)]:
        assert refuses(error) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == f"error: {error}\n"
        assert (message or str(error)) in captured.err
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        refuses(ZeroDivisionError("division by zero"))
    assert tool(lambda argv: 0)([]) == 0


@pytest.mark.parametrize("path", TOOLS, ids=[path.name for path in TOOLS])
def test_every_tool_runs_its_main_through_the_shared_wrapper(path):
    tree = ast.parse(path.read_text())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    assert [ast.unparse(decorator) for decorator in main.decorator_list] == ["tool"], path.name
    assert path.read_text().endswith('if __name__ == "__main__":\n    sys.exit(main())\n'), path.name


def run(tool_name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool_name), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def assert_one_line(result: subprocess.CompletedProcess, *named: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in named:
        assert text in lines[0], (text, lines[0])


def test_train_det_with_a_bad_setting_names_it(tmp_path):
    assert_one_line(run("train_det.py", "--set", "train.batch_size=0", cwd=tmp_path),
                    "override 'train.batch_size=0'", "train.batch_size = 0 must be at least 1")


def test_train_det_with_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    (tmp_path / "broken.yaml").write_text("train:\n  epochs: 5\n lr: [0.1\n")
    assert_one_line(run("train_det.py", "--config", "broken.yaml", cwd=tmp_path), "broken.yaml:3:2: YAML syntax error")


def test_eval_det_with_a_missing_checkpoint_names_it(tmp_path):
    assert_one_line(run("eval_det.py", "--checkpoint", "missing.pt", cwd=tmp_path),
                    "checkpoint missing.pt does not exist")


def test_predict_with_a_file_that_is_no_checkpoint_names_it(tmp_path):
    (tmp_path / "notes.pt").write_text("not weights\n")
    (tmp_path / "image.png").write_bytes(b"")
    assert_one_line(run("predict.py", "--checkpoint", "notes.pt", "--images", "image.png", cwd=tmp_path),
                    "notes.pt: not a detlab checkpoint")


def test_the_data_tools_exit_2_on_a_missing_dataset(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("dataset_stats", ROOT / "tools" / "dataset_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--png", str(tmp_path / "sizes.png"), "voc", "--root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nowhere") in err and err.count("\n") == 1
