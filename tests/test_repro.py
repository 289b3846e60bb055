"""ddlib.repro: the warm worker runs a notebook as papermill's kernel would, refuses what it cannot run faithfully,
and the fast `dvc.lock` writer writes exactly DVC's bytes. (The tiny end-to-end test in test_pipeline.py runs the
whole pipeline through it against the golden results of plain `dvc repro`.)"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ddlib import repro

ROOT = Path(__file__).resolve().parents[1]


def notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [nbformat.v4.new_code_cell(sources[0], metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(s) for s in sources[1:]]
    nb.cells = [nbformat.v4.new_markdown_cell("# a test")] + cells
    nbformat.write(nb, path)
    return path


def client(nb: Path, out: Path, env: dict | None = None, params: str = "{x: 3}"):
    cmd = [sys.executable, *repro.CLIENT, "papermill", "-k", "python3", "--no-progress-bar", "--log-level",
           "WARNING", "--stdout-file", "-", "--stderr-file", "-", str(nb), str(out), "-y", params]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env or dict(os.environ), timeout=300)


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def warm():
    previous = os.getcwd()
    os.chdir(ROOT)    # the server serves the directory it was started in
    try:
        with repro.warm_process() as path:
            yield path
    finally:
        os.chdir(previous)


def test_a_notebook_runs_in_the_warm_process_with_a_kernel_s_outputs(warm, tmp_path):
    nb = notebook(tmp_path / "nb.ipynb", "x = 1",
                  "import sys, os\nprint('twice', x * 2)\nprint('warn', file=sys.stderr)\npid = os.getpid()",
                  "from IPython.display import Markdown, display\ndisplay(Markdown('**shown**'))\nx + 1",
                  "x + 2;")
    proc = client(nb, tmp_path / "out.ipynb", env={**os.environ, repro.ENV_SOCKET: warm})
    assert proc.returncode == 0, proc.stderr
    assert "running without the warm process" not in proc.stderr
    assert "twice 6\nwarn" in proc.stdout      # echoed where papermill was told ('-' is stdout for both)
    params, injected, first, second, third = code_cells(tmp_path / "out.ipynb")
    assert "x = 3" in injected.source and "injected-parameters" in injected.metadata["tags"]
    assert [o["output_type"] for o in first.outputs] == ["stream", "stream"]
    assert first.outputs[0]["text"] == "twice 6\n" and first.outputs[1]["name"] == "stderr"
    assert [o["output_type"] for o in second.outputs] == ["display_data", "execute_result"]
    assert second.outputs[0]["data"]["text/markdown"] == "**shown**"
    assert second.outputs[1]["data"]["text/plain"] == "4" and second.outputs[1]["execution_count"] == 4
    assert third.outputs == []                                       # a trailing semicolon shows nothing
    meta = nbformat.read(tmp_path / "out.ipynb", as_version=4).metadata["papermill"]
    assert meta["parameters"] == {"x": 3} and meta["duration"] > 0 and not meta["exception"]


def test_a_stage_s_first_training_step_and_figure_import_nothing_new(warm, tmp_path):
    """torch imports torch._dynamo (~880 modules, ~1.3 s) on the first optimizer step; the warm process has."""
    nb = notebook(tmp_path / "nb.ipynb", "x = 1",
                  "import sys\nbefore = set(sys.modules)\nimport torch\nimport matplotlib.pyplot as plt\n"
                  "net = torch.nn.Linear(2, 1)\nopt = torch.optim.SGD(net.parameters(), lr=0.1)\n"
                  "net(torch.ones(3, 2)).sum().backward()\nopt.step()\n"
                  f"plt.plot([1, 2]); plt.savefig({str(tmp_path / 'f.png')!r})\n"
                  "print('new', sorted(set(sys.modules) - before))")
    proc = client(nb, tmp_path / "out.ipynb", env={**os.environ, repro.ENV_SOCKET: warm})
    assert proc.returncode == 0, proc.stderr
    new = eval(proc.stdout.split("new ", 1)[1].splitlines()[0])
    assert "torch._dynamo" not in new and len(new) < 10, new


def test_a_failing_cell_stops_the_notebook_and_the_command_fails(warm, tmp_path):
    nb = notebook(tmp_path / "nb.ipynb", "x = 1", "raise ValueError(f'boom {x}')", "print('never')")
    proc = client(nb, tmp_path / "out.ipynb", env={**os.environ, repro.ENV_SOCKET: warm})
    assert proc.returncode == 1 and "boom 3" in proc.stderr and "PapermillExecutionError" in proc.stderr
    cells = code_cells(tmp_path / "out.ipynb")
    error = cells[2].outputs[-1]
    assert error["output_type"] == "error" and error["ename"] == "ValueError" and error["evalue"] == "boom 3"
    assert cells[3].outputs == [] and cells[3].metadata["papermill"]["status"] != "completed"


def test_what_the_warm_process_cannot_run_faithfully_runs_as_plain_dvc_would(warm, tmp_path):
    nb = notebook(tmp_path / "nb.ipynb", "x = 1", "import os\nprint('threads', os.environ.get('OMP_NUM_THREADS'))")
    env = {**os.environ, repro.ENV_SOCKET: warm, "OMP_NUM_THREADS": "1"}
    proc = client(nb, tmp_path / "out.ipynb", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "running without the warm process (OMP_NUM_THREADS differs)" in proc.stderr
    assert "threads 1" in proc.stdout
    # no server at all, or not a papermill command: the command itself
    echo = subprocess.run([sys.executable, *repro.CLIENT, "echo", "plain"], capture_output=True, text=True,
                          env={**os.environ, repro.ENV_SOCKET: str(tmp_path / "none")}, cwd=ROOT)
    assert echo.returncode == 0 and echo.stdout == "plain\n" and echo.stderr == ""
    request = {"argv": ["papermill"], "cwd": str(ROOT), "env": dict(os.environ)}
    assert repro._refusal({**request, "argv": ["python", "x.py"]}, repro._sources()) == "not a papermill command"
    assert repro._refusal({**request, "cwd": str(tmp_path)}, repro._sources()) == "another working directory"
    assert repro._refusal(request, {"ddlib/gone.py": (0, 0)}).startswith("ddlib changed")
    assert repro._refusal(request, repro._sources()) is None


def test_the_fast_lock_writer_writes_dvc_s_own_bytes(tmp_path, monkeypatch):
    import dvc.dvcfile
    from dvc.utils.serialize import dumps_yaml, parse_yaml
    original = dvc.dvcfile.modify_yaml
    monkeypatch.setattr(dvc.dvcfile, "modify_yaml", original)   # restored after the test
    for key, value in (("text", None), ("data", None), ("blocks", {}), ("checked", False), ("off", False)):
        monkeypatch.setattr(repro._Lock, key, value)
    text = (ROOT / "dvc.lock").read_text()
    assert repro._render(parse_yaml(text, "dvc.lock")) == text

    repro.fast_lockfile()
    fast, slow = tmp_path / "fast" / "dvc.lock", tmp_path / "slow" / "dvc.lock"
    for path in (fast, slow):
        path.parent.mkdir()
        path.write_text(text)
    first = next(iter(parse_yaml(text, "dvc.lock")["stages"]))

    def edits(data, step):
        if step == 0:
            data["stages"][first]["cmd"] = ["echo 'a changed command' \"quoted\""]
        elif step == 1:
            data["stages"]["new@stage"] = {"cmd": "true", "outs": [{"path": "x", "md5": "0" * 32, "size": 1}]}
        else:
            del data["stages"][first]

    for step in range(3):
        with dvc.dvcfile.modify_yaml(str(fast)) as data:
            edits(data, step)
        with original(str(slow)) as data:
            edits(data, step)
        assert fast.read_text() == slow.read_text(), step
    assert not repro._Lock.off and repro._Lock.checked
    # a file changed behind its back is parsed again, and other YAML files are DVC's business
    slow_data = parse_yaml(slow.read_text(), "dvc.lock")
    changed = copy.deepcopy(slow_data)
    changed["stages"]["new@stage"]["cmd"] = "false"
    fast.write_text(dumps_yaml(changed))
    with dvc.dvcfile.modify_yaml(str(fast)) as data:
        assert data["stages"]["new@stage"]["cmd"] == "false"
    assert json.dumps(parse_yaml(fast.read_text(), "x")) == json.dumps(changed)
