"""`dvc repro` with the per-stage start-up taken out: the same stages, commands, outputs and `dvc.lock`.

    python -m ddlib.repro [dvc repro arguments]     (what `make repro` runs; --cold: plain papermill per stage)

A stage of this pipeline is a papermill command; run by plain `dvc repro`, each one starts papermill, a Jupyter
kernel and, inside it, torch and ddlib (~4 s), and DVC then rewrites the whole `dvc.lock` with its round-trip YAML
parser (~2 s at 177 stages). Over the default grid that is ~20 of its ~80 minutes. This wrapper runs DVC itself,
in this process, with two changes and nothing else:

1. A warm worker. A server process imports torch, ddlib, papermill and IPython once and runs no tensor operation
   (so no thread pool exists to be broken by a fork). Every stage's command starts with `$DD_LAUNCH`, which
   points at this module's client: the client hands the command, its working directory, environment and
   terminal (stdin/stdout/stderr, passed as file descriptors) to the server, which forks a child for it. The
   child runs papermill's own command line with the `ddlib-inprocess` engine: the notebook's cells run in an
   IPython shell inside that child, and their streams, displays, results and errors go into the output notebook
   as a kernel's would. A child is a fresh copy of the untouched server, so a stage sees the state a new
   process would see; the tiny end-to-end test checks the results bit for bit against plain `dvc repro`.
   The server refuses a command it cannot run faithfully and the client then runs it as plain DVC would: not
   papermill, another environment (preload, OpenMP/MKL settings), another directory, or ddlib source changed since
   the server imported it (the server then restarts itself with the new code).
2. `dvc.lock` written without re-parsing: the file this process last wrote is kept parsed, and each stage's YAML
   block is rendered once and reused until the stage's entry changes. The first write is checked byte for byte
   against DVC's own dump; any difference (another DVC version) switches this back to DVC's code.

`python -m ddlib.launch` uses the same warm process for its local workers (each worker's thread count or GPU
is set in its child). Without either (`dvc repro`, a cluster's `DD_LAUNCH`) everything runs as before.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT = ("-m", "ddlib.repro", "--client", "--")
ENV_SOCKET = "DDLIB_WARM_SOCKET"
# read when Python, the allocator, OpenMP/MKL (at torch's import) or matplotlib start: a command whose values
# differ cannot use the warm process. (CUDA_VISIBLE_DEVICES and DDLIB_THREADS are read when a stage first asks
# for a device or sets its threads, in the child: the server never does either.)
FROZEN_ENV = ("LD_PRELOAD", "PYTHONHASHSEED", "PYTHONPATH", "MPLBACKEND")
FROZEN_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_")


def _frozen(env) -> dict:
    return {k: v for k, v in env.items() if k in FROZEN_ENV or k.startswith(FROZEN_PREFIXES)}
ENGINE = "ddlib-inprocess"


# ------------------------------------------------------------------------------------------------- dvc.lock
class _Lock:
    text: str | None = None      # what this process last wrote ...
    data: dict | None = None     # ... and the data it was rendered from
    blocks: dict = {}            # stage name -> (its entry, its YAML text)
    checked = False              # the first render matched DVC's own dump
    off = False                  # it did not: use DVC's code


def _render(data: dict) -> str | None:
    from dvc.utils.serialize import dumps_yaml
    if list(data) != ["schema", "stages"] or not data["stages"]:
        return None
    parts = [dumps_yaml({"schema": data["schema"]}), "stages:\n"]
    for name, entry in data["stages"].items():
        block = _Lock.blocks.get(name)
        if block is None or block[0] != entry:
            text = dumps_yaml({"stages": {name: entry}})
            block = _Lock.blocks[name] = (copy.deepcopy(entry), text[len("stages:\n"):])
        parts.append(block[1])
    return "".join(parts)


def fast_lockfile() -> None:
    """Make DVC's `dvc.lock` updates cheap in this process (item 2 of the module doc)."""
    import dvc.dvcfile
    from dvc.utils.serialize import dumps_yaml, parse_yaml
    original = dvc.dvcfile.modify_yaml

    @contextlib.contextmanager
    def modify_yaml(path, fs=None):
        if _Lock.off or os.path.basename(os.fspath(path)) != "dvc.lock":
            with original(path, fs=fs) as data:
                yield data
            return
        text = Path(path).read_text(encoding="utf-8") if os.path.exists(path) else ""
        if text and text == _Lock.text:
            data = copy.deepcopy(_Lock.data)
        else:
            data = parse_yaml(text, path) if text else {}   # the C loader; same values as the round-trip one
        yield data
        new = _render(data)
        if new is not None and not _Lock.checked:
            _Lock.checked, _Lock.off = True, new != dumps_yaml(data)
        if new is None or _Lock.off:
            new = dumps_yaml(data)
        Path(path).write_text(new, encoding="utf-8")
        _Lock.text, _Lock.data = new, copy.deepcopy(data)

    dvc.dvcfile.modify_yaml = modify_yaml


# ------------------------------------------------------------------------------------- the in-process engine
def _engine():
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from papermill.engines import Engine
    from traitlets.config import Config

    class Stream:
        """sys.stdout/err inside a cell: recorded in order with the displays, echoed where papermill was told."""
        encoding, errors = "utf-8", "strict"

        def __init__(self, name, sink, echo):
            self.name, self.sink, self.echo = name, sink, echo

        def write(self, s):
            if s:
                last = self.sink[-1] if self.sink else None
                if last is not None and last.get("output_type") == "stream" and last["name"] == self.name:
                    last["text"] += s
                else:
                    self.sink.append({"output_type": "stream", "name": self.name, "text": s})
                if self.echo is not None:
                    self.echo.write(s)
            return len(s)

        def writelines(self, lines):
            for line in lines:
                self.write(line)

        def flush(self):
            if self.echo is not None:
                self.echo.flush()

        def isatty(self):
            return False

        def fileno(self):
            raise io.UnsupportedOperation("fileno")

        def writable(self):
            return True

    class Publisher(DisplayPublisher):
        sink: list = []

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            self.sink.append({"output_type": "display_data", "data": data, "metadata": metadata or {}})

        def clear_output(self, wait=False):
            self.sink.clear()

    class Shell(InteractiveShell):
        sink: list = []

        def _showtraceback(self, etype, evalue, stb):
            self.sink.append({"output_type": "error", "ename": etype.__name__, "evalue": str(evalue),
                              "traceback": list(stb)})
            sys.__stderr__.write(self.InteractiveTB.stb2text(stb) + "\n")

    class InProcess(Engine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, stdout_file=None, stderr_file=None, **kwargs):
            import nbformat
            config = Config()
            config.HistoryManager.enabled = False
            config.InteractiveShell.colors = "nocolor"
            shell = Shell.instance(config=config)
            shell.display_pub = Publisher(shell=shell)
            count = 0
            for index, cell in enumerate(nb_man.nb.cells):
                nb_man.cell_start(cell, index)
                failed = False
                try:
                    if cell.cell_type != "code":
                        continue
                    count += 1
                    sink: list = []
                    Shell.sink = Publisher.sink = sink

                    def hook(value, sink=sink, quiet=cell.source.rstrip().endswith(";")):
                        if value is not None and not quiet:
                            data, metadata = shell.display_formatter.format(value)
                            sink.append({"output_type": "execute_result", "execution_count": count,
                                         "data": data, "metadata": metadata})
                    shell.display_trap.hook = hook
                    saved = sys.stdout, sys.stderr
                    sys.stdout = Stream("stdout", sink, stdout_file)
                    sys.stderr = Stream("stderr", sink, stderr_file)
                    try:
                        result = shell.run_cell(cell.source, store_history=False)
                    finally:
                        sys.stdout, sys.stderr = saved
                    cell.execution_count = count
                    cell.outputs = [nbformat.from_dict(o) for o in sink]
                    failed = not result.success
                    if failed:
                        nb_man.cell_exception(cell, cell_index=index)
                finally:
                    nb_man.cell_complete(cell, cell_index=index)
                if failed:
                    break
            return nb_man.nb

    return InProcess


# --------------------------------------------------------------------------------------- server and client
def _sources() -> dict:
    """The ddlib files this process has imported, with their mtime and size."""
    out = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "ddlib" or name.startswith("ddlib.")) and path:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                out[path] = (st.st_mtime_ns, st.st_size)
    return out


# What each stage would otherwise import for itself, ~880 modules and ~1.3 s a stage: torch imports
# torch._dynamo (with sympy, mpmath, torch.distributed) on the first optimizer step, whose `step` is wrapped by
# `torch._disable_dynamo`; IPython its magics and completer when a shell is made; matplotlib its Agg backend on
# the first figure. Importing runs no tensor operation (no OpenMP pool is started before the fork).
LAZY_IMPORTS = ("matplotlib.pyplot", "matplotlib.backends.backend_agg", "seaborn", "nbformat", "papermill.cli",
                "IPython.core.interactiveshell", "IPython.core.magics", "IPython.core.completer",
                "IPython.core.application", "IPython.core.crashhandler", "IPython.core.logger",
                "IPython.core.oinspect", "bdb", "torch._dynamo")


def _preload() -> None:
    import importlib
    import pkgutil
    for package in ("ddlib", "ddlib.methods", "ddlib.apps"):
        with contextlib.suppress(ImportError):
            mod = importlib.import_module(package)
            for info in pkgutil.iter_modules(mod.__path__, package + "."):
                if info.name not in ("ddlib.repro", "ddlib.launch", "ddlib.plan"):
                    importlib.import_module(info.name)
    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    from PIL import Image
    Image.init()                    # PIL's image plugins, which a first savefig would load
    from papermill.engines import papermill_engines
    papermill_engines.register(ENGINE, _engine())


def _refusal(request: dict, sources: dict) -> str | None:
    if Path(request["argv"][0]).name != "papermill":
        return "not a papermill command"
    if os.path.realpath(request["cwd"]) != os.path.realpath(os.getcwd()):
        return "another working directory"
    mine, theirs = _frozen(os.environ), _frozen(request["env"])
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            return f"{key} differs"
    if _sources() != sources:
        return "ddlib changed since the warm process started"
    return None


def _child(conn: socket.socket, request: dict, fds: list[int]) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
        os.close(fd)
    # new stream objects: the server's knew another file (seekable or not, a terminal or not)
    sys.stdin = sys.__stdin__ = open(0, "r", encoding="utf-8", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False, buffering=1 if os.isatty(1) else -1)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", closefd=False, buffering=1)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    from papermill.cli import papermill as cli
    args = list(request["argv"][1:])
    if "--engine" not in args:
        args += ["--engine", ENGINE]
    try:
        cli.main(args=args, prog_name="papermill", standalone_mode=True)
        rc = 0
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:   # what papermill's own process would print before exiting with 1
        import traceback
        traceback.print_exc()
        rc = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    return rc


def serve(path: str) -> None:
    """The warm process: preload, then fork a child per request until stdin closes (its parent is gone)."""
    _preload()
    sources = _sources()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)     # children are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the client forwards Ctrl-C to the child it started
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    server.listen(8)
    os.replace(path + ".tmp", path)                  # the socket appears when the server is ready
    while True:
        ready, _, _ = select.select([server, sys.stdin], [], [])
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):
            return                                    # the process that started it has gone
        if server not in ready:
            continue
        conn, _ = server.accept()
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(msg.decode())
        except (OSError, ValueError):
            conn.close()
            continue
        refusal = _refusal(request, sources) if len(fds) == 3 else "no terminal passed"
        if refusal:
            conn.sendall(json.dumps({"refused": refusal}).encode() + b"\n")
            conn.close()
            for fd in fds:
                os.close(fd)
            if refusal.startswith("ddlib changed"):
                server.close()
                os.execv(sys.executable, [sys.executable, "-m", "ddlib.repro", "--server", path])
            continue
        pid = os.fork()
        if pid == 0:
            server.close()
            rc = _child(conn, request, fds)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"rc": rc}).encode() + b"\n")
            os._exit(rc)
        conn.close()
        for fd in fds:
            os.close(fd)


def client(argv: list[str]) -> int:
    """Run `argv` in the warm process when there is one that can, else exactly as the shell would."""
    path = os.environ.get(ENV_SOCKET)
    if path and os.path.exists(path) and Path(argv[0]).name == "papermill":
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
            request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
            socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
            reader = conn.makefile("rb")
            first = json.loads(reader.readline() or b"{}")
        except OSError:
            first = {"refused": "no warm process"}
        if "pid" in first:
            pid = first["pid"]
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, lambda s, _f: os.kill(pid, s))
            last = json.loads(reader.readline() or b"{}")
            return int(last.get("rc", 1))   # no status: the child was killed
        print(f"ddlib.repro: running without the warm process ({first.get('refused', 'no answer')})",
              file=sys.stderr)
    os.execvp(argv[0], argv)


@contextlib.contextmanager
def warm_process(env: dict | None = None):
    """Start the server (with `env` added to this environment), point `$DD_LAUNCH` at the client, stop the server
    afterwards."""
    folder = tempfile.mkdtemp(prefix="ddlib-warm-")
    path = os.path.join(folder, "socket")
    proc = subprocess.Popen([sys.executable, "-m", "ddlib.repro", "--server", path], stdin=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, **(env or {})})
    while not os.path.exists(path) and proc.poll() is None:   # ~3 s of imports, once
        time.sleep(0.05)
    saved = {k: os.environ.get(k) for k in ("DD_LAUNCH", ENV_SOCKET)}
    os.environ["DD_LAUNCH"] = " ".join([sys.executable, *CLIENT])
    os.environ[ENV_SOCKET] = path
    try:
        yield path
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(folder)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--server"]:
        serve(argv[1])
        return 0
    if argv[:2] == ["--client", "--"]:
        return client(argv[2:])
    cold = "--cold" in argv
    argv = [a for a in argv if a != "--cold"]
    from dvc.cli import main as dvc_main
    fast_lockfile()
    # a cluster launcher keeps its own prefix
    with contextlib.nullcontext() if cold or os.environ.get("DD_LAUNCH") else warm_process():
        return dvc_main(["repro", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
