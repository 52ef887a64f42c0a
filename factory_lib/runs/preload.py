"""Preloaded task starts: a cycle's tasks start from a process that has imported Metaflow,
torch, Lightning and what the join and the end step use, instead of importing them again.

Importing torch and Lightning takes a fresh process 3 to 5 s on a 2-core machine, and every
train task paid it on the critical path of its cycle; the join paid 1 s for Optuna's importance
evaluators (scikit-learn), the end step 0.4 s for its plots. A local `run` or `resume` now
starts one *preloader* as it begins: a process that imports those while the start step runs,
then waits on a Unix socket in the machine's temp directory (named by FACTORY_PRELOAD_SOCKET,
which the tasks inherit). What the train tasks need comes first (a task that asks meanwhile
waits for it); what only the join and the end step need is imported on otherwise idle cores
(SCHED_IDLE), so it never slows a trial.

Every task but the start step's (which comes before the imports could be done) hands itself
over before it imports anything else (`hand_over`): it sends its command line, environment,
working directory and standard streams; the preloader forks a child that becomes the task,
with those, and runs the flow file as `python` would. The process Metaflow started stays as the
child's *relay*: it passes on the signals it gets and exits as the child did (its exit code,
or the same signal), so the runtime, its logs, @timeout, @retry and @catch see one task as
before. A relay killed with SIGKILL takes its child with it: the child watches the relay's end
of the socket and kills itself when it closes. Nothing else changes for the task: it forks its
trial workers as before.

A task starts cold, importing as before, where there is no preloader (a task on AWS Batch
or Kubernetes, a run with FACTORY_PRELOAD=0, a machine with an NVIDIA device, whose CUDA
driver must not be set up before a fork), where it could not start, and where the task's
interpreter or environment is not the one the preloader imported with (a step with its own
@environment variables or @conda environment): a cold start is the fallback, never an error.
This module imports only the standard library and `runs.env`: a relay imports nothing else.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from glob import glob
from importlib import import_module
from pathlib import Path
from typing import NoReturn

from factory_lib.runs.env import (
    machine_scratch,
    option_values,
    process_alive,
    sends_tasks_elsewhere,
)

# Set in a run's environment, so its tasks inherit it: the preloader's socket.
SOCKET_VARIABLE = "FACTORY_PRELOAD_SOCKET"
# FACTORY_PRELOAD=0 turns preloading off for a run.
SWITCH_VARIABLE = "FACTORY_PRELOAD"
SWITCH_VALUES = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}
# What the preloader imports, in order: first what every task and the train tasks import,
# then, on idle cores only, what the join (Optuna's importance evaluators) and the end step
# (plots, the card) add, taking the requests that came meanwhile between two imports.
FIRST = ("metaflow", "torch", "lightning", "factory_lib.train.group", "factory_lib.cycle.measure")
IDLE = ("optuna.importance", "factory_lib.explore.cards", "factory_lib.explore.analysis")
# Set in a task that the preloader started (to its pid), so it is not handed over again.
CHILD_VARIABLE = "FACTORY_PRELOADED_TASK"
# What may differ between the preloader's environment and a task's: the runtime adds these.
PER_TASK = frozenset({"METAFLOW_RUN_ID", "PYTHONUNBUFFERED", SOCKET_VARIABLE})
# How often the preloader reaps its children and looks whether its run is still there.
POLL_S = 0.1
# A Unix socket's path must fit in 108 bytes.
MAX_SOCKET_PATH = 100
_LENGTH = struct.Struct("!Q")
_STREAMS = 3  # stdin, stdout, stderr
# The runtime's tracing variables, also set per task.
PER_TASK_PREFIXES = ("OTEL_", "TRACEPARENT")
# Signals a relay passes on to its task (SIGKILL cannot be caught: the task sees the relay go).
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def _switch() -> str:
    return os.environ.get(SWITCH_VARIABLE, "1").strip().lower()


def switch_problem() -> str | None:
    """What is wrong with FACTORY_PRELOAD, if it is set to neither on nor off."""
    if _switch() in SWITCH_VALUES:
        return None
    return (
        f"{SWITCH_VARIABLE}={os.environ[SWITCH_VARIABLE]!r} is neither on nor off: 1 preloads "
        "a local run's tasks (the default), 0 starts each of them cold"
    )


def wanted(argv: Sequence[str]) -> bool:
    """Whether this command should start a preloader: a local `run` or `resume` on a machine
    without an NVIDIA device, unless FACTORY_PRELOAD=0."""
    if not SWITCH_VALUES.get(_switch(), True) or "step" in argv:
        return False
    if not {"run", "resume"} & set(argv) or sends_tasks_elsewhere(argv):
        return False
    return sys.platform == "linux" and not glob("/dev/nvidia[0-9]*")


def start_preloader(argv: Sequence[str]) -> Path | None:
    """Start the preloader for this run (when `wanted`) and tell the tasks where it is.

    It is stopped when this process exits, and exits by itself once this process is gone
    and none of its tasks is left. Returns its socket, or None.
    """
    if not wanted(argv):
        return None
    folder = machine_scratch()
    path = folder / f"preload-{os.getpid()}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return None
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_stale(folder)
    env = {**os.environ, "PYTHONUNBUFFERED": "x"}  # as Metaflow starts its tasks
    preloader = subprocess.Popen(
        [sys.executable, "-m", __name__, str(path), str(os.getpid())],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # not the run's streams: whoever reads them would wait
        stderr=subprocess.DEVNULL,  # for the preloader too; its errors go to a file
    )
    atexit.register(_stop, preloader)
    os.environ[SOCKET_VARIABLE] = str(path)
    return path


def _remove_stale(folder: Path) -> None:
    """Remove the sockets (and error files) of runs killed with their preloader (SIGKILL to
    the process group, a machine's reboot): a run's socket is named after its pid."""
    for stale in folder.glob("preload-*.sock*"):
        pid = stale.name.removeprefix("preload-").split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def _stop(preloader: subprocess.Popen[bytes]) -> None:
    if preloader.poll() is None:
        preloader.terminate()


def task_started() -> float:
    """When this task's process began, for a task that times its own start-up: now, in a
    process Metaflow started (call it first thing); its relay's start, in a task the preloader
    forked."""
    return _relay_started if _relay_started is not None else time.time()


_relay_started: float | None = None
# A preloaded task's exit code (what it gave sys.exit), once it has one.
_NOT_A_TASK = object()
_task_code: object = _NOT_A_TASK
# The names of the preloader's own `__main__`, before it imported anything.
_own_main: set[str] = set()


def hand_over(argv: Sequence[str], started: float, cold: Sequence[str] = ("start",)) -> None:
    """If this process is a task (of a step not in `cold`) and its run has a preloader, let
    the preloader run the task and relay for it: then this never returns. Otherwise, or
    when the preloader turns it down or does not answer, return: the task starts cold.
    `started`: when this process began (`task_started`), which the task reports as its own."""
    path = os.environ.get(SOCKET_VARIABLE)
    steps = option_values(argv, "step")
    if not path or not steps or steps[0] in cold:
        return
    if CHILD_VARIABLE in os.environ:
        return  # the task the preloader started, or a process that task started
    if _spawned_worker():
        return  # a task's worker, started with `spawn`, imports the flow file as __mp_main__
    request = {
        "argv": list(argv),
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "executable": sys.executable,
        "started": started,
    }
    payload = json.dumps(request).encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [_LENGTH.pack(len(payload)) + payload], list(range(_STREAMS)))
        answer = _read_line(conn)  # once the preloader has forked the task, or turned it down
    except OSError as exc:
        answer = f"cold {exc}"
    if answer is None:
        answer = f"cold the preloader ended before taking the task{_error_of(path)}"
    if answer.startswith("cold "):
        conn.close()
        print(f"not preloaded ({answer[5:]}): starting cold", file=sys.stderr)
        return
    _relay(conn, int(answer))


def _spawned_worker() -> bool:
    """Whether this process is a multiprocessing worker, which has the task's command line:
    one started with `spawn` runs the flow file as the module `__mp_main__` before it is told
    it is one (elsewhere `__mp_main__` is another name of `__main__`)."""
    if getattr(sys.modules.get("__mp_main__"), "__name__", None) == "__mp_main__":
        return True
    multiprocessing = sys.modules.get("multiprocessing")  # a worker has imported it already
    return multiprocessing is not None and multiprocessing.parent_process() is not None


def _error_of(path: str) -> str:
    error = Path(f"{path}.error")
    if not error.is_file():
        return ""
    lines = error.read_text().strip().splitlines()
    return f": {lines[-1]}" if lines else ""


def _read_line(conn: socket.socket) -> str | None:
    """One line from the preloader, without its newline; None at the end of the stream."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            return None
        data += chunk
    return data.decode().strip()


def _relay(conn: socket.socket, child: int) -> NoReturn:
    """Be the task's process for Metaflow's runtime: pass signals on to `child`, then exit as
    it did."""

    def forward(signum: int, _frame: object) -> None:
        try:
            # A signal sent to the whole process group (Ctrl-C) reaches the child already.
            if signum != signal.SIGINT or os.getpgid(child) != os.getpgrp():
                os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    status = _read_line(conn)
    if status is None:  # the preloader is gone: wait for the task, whose status is lost
        while process_alive(child):
            select.select([], [], [], POLL_S)
        print("the preloader ended before this task: its exit status is lost", file=sys.stderr)
        os._exit(1)
    code = int(status)
    sys.stdout.flush()
    if code < 0:  # killed by a signal: end the same way, so the runtime reads the same
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be set, nor need be
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        os._exit(128 - code)  # a signal that does not end a process by default, as a shell says
    os._exit(code)


def serve(path: Path, run: int) -> None:
    """The preloader: import FIRST, then IDLE on idle cores, then take the requests on `path`
    (between IDLE's imports too): fork a task for each, and tell its relay the task's pid and
    then its exit status. Exits once the run's process `run` is gone and no task is left."""
    me = os.getpid()  # a forked task leaves through here too, and must leave the socket be
    # Before the imports register theirs, so that in a task it runs after all of them.
    atexit.register(_exit_task_now)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the run is over: clean up
    # Ctrl-C reaches the whole run: its tasks stop, and their relays still need their status.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    path.unlink(missing_ok=True)  # a run's, killed, whose pid this run has now
    Path(f"{path}.error").unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))  # before importing: a task that comes early waits for them
        listener.listen(64)
        server = _Server(listener, dict(os.environ))
        global _own_main
        _own_main = set(vars(sys.modules["__main__"]))
        for name in FIRST:  # a task that comes meanwhile waits: it would import them again
            import_module(name)
        if _idle_priority(True):
            for name in IDLE:
                server.take(0)
                import_module(name)
            _idle_priority(False)
        while os.getppid() == run or server.relays:
            server.take(POLL_S)
    except Exception:
        if os.getpid() == me:
            Path(f"{path}.error").write_text(traceback.format_exc())
        raise
    finally:
        if os.getpid() == me:
            listener.close()
            path.unlink(missing_ok=True)


def _idle_priority(idle: bool) -> bool:
    """Run this process only on otherwise idle cores (SCHED_IDLE), or as before; False where
    the system does not allow it, or would not allow going back."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
        if idle:  # going back must be allowed too, before each fork
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


class _Server:
    """The preloader's socket, the environment it imported with, and its tasks' relays."""

    def __init__(self, listener: socket.socket, env: dict[str, str]) -> None:
        self.listener = listener
        self.env = env
        self.relays: dict[int, socket.socket] = {}
        # A task that ends wakes the loop at once: its relay, and the runtime, wait on it.
        self.ended, wakeup = os.pipe()
        os.set_blocking(wakeup, False)
        signal.set_wakeup_fd(wakeup)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def take(self, timeout: float) -> None:
        """Take the requests that come within `timeout` seconds, and report the tasks that
        ended."""
        listening = self.listener.fileno()
        while ready := select.select([listening, self.ended], [], [], timeout)[0]:
            if self.ended in ready:
                os.read(self.ended, 512)
                self._reap()
            if listening in ready:
                self._start(self.listener.accept()[0])
            timeout = 0
        self._reap()

    def _start(self, conn: socket.socket) -> None:
        """Fork the task a relay asks for on `conn`, or tell it why not."""
        try:
            request, fds = _receive(conn)
        except (OSError, EOFError, ValueError):
            conn.close()
            return
        why = self._unlike(request)
        if why:
            for fd in fds:
                os.close(fd)
            _answer(conn, f"cold {why}")
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        idle = os.sched_getscheduler(0) == os.SCHED_IDLE
        if idle:  # the task runs as the run's other processes do
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        child = os.fork()
        if child == 0:
            signal.set_wakeup_fd(-1)
            for other in (self.listener, *self.relays.values()):
                other.close()
            os.close(self.ended)
            _become_task(conn, fds, request)
        if idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        for fd in fds:
            os.close(fd)
        self.relays[child] = conn
        _answer(conn, str(child))

    def _unlike(self, request: dict[str, object]) -> str | None:
        """Why a task cannot start from this process: another interpreter, or an environment
        that what was imported here may have read otherwise."""
        if request["executable"] != sys.executable:
            return f"it runs {request['executable']}, not {sys.executable}"
        env = request["env"]
        assert isinstance(env, dict)
        names = {*env, *self.env} - PER_TASK
        differ = sorted(
            n
            for n in names
            if env.get(n) != self.env.get(n) and not n.startswith(PER_TASK_PREFIXES)
        )
        return f"its environment sets {', '.join(differ)} otherwise" if differ else None

    def _reap(self) -> None:
        """Tell the relay of each task that ended how it ended."""
        while self.relays:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.relays.pop(pid, None)
            if conn is not None:
                _answer(conn, str(os.waitstatus_to_exitcode(status)))
                conn.close()


def _receive(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    """A relay's request: its length, then JSON, with the task's standard streams."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, _STREAMS)
    if len(fds) != _STREAMS:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"{len(fds)} file descriptors, not {_STREAMS}")
    while len(data) < _LENGTH.size or len(data) < _LENGTH.size + _LENGTH.unpack_from(data)[0]:
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise EOFError("the relay closed the connection mid-request")
        data += chunk
    request = json.loads(data[_LENGTH.size :])
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    return request, list(fds)


def _answer(conn: socket.socket, line: str) -> None:
    with contextlib.suppress(OSError):  # the relay is gone; its task, if any, sees that and ends
        conn.sendall(f"{line}\n".encode())


def _become_task(conn: socket.socket, fds: list[int], request: dict[str, object]) -> NoReturn:
    """In the forked child: take the relay's streams, directory, environment and command line,
    end with the relay, and run the flow file as `python <argv>` would."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
    env = {str(k): str(v) for k, v in request["env"].items()}  # type: ignore[attr-defined]
    env[CHILD_VARIABLE] = str(os.getpid())  # this is the task: not handed over again
    for signum in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if "numpy" in sys.modules:  # its random state was seeded once, in the preloader
        sys.modules["numpy"].random.seed()
    os.chdir(str(request["cwd"]))
    os.environ.clear()
    os.environ.update(env)
    sys.argv = argv
    sys.path[0] = str(Path(argv[0]).resolve().parent)
    global _relay_started
    _relay_started = float(request["started"])  # type: ignore[arg-type]
    _end_with(conn)
    global _task_code
    # What the imports put on `__main__` (Metaflow its ForeachFrame, for pickle) goes on the
    # flow file's `__main__` too, as it would have been were they imported there.
    main = sys.modules["__main__"]
    put = {name: value for name, value in vars(main).items() if name not in _own_main}
    _task_code = 0
    try:
        runpy.run_path(argv[0], init_globals=put, run_name="__main__")
    except SystemExit as exit_:
        _task_code = exit_.code
    except BaseException:  # noqa: BLE001 - what the interpreter does with it, then exits
        traceback.print_exc()
        _task_code = 1
    sys.exit()  # the exit handlers run, _exit_task_now last, with `_task_code`


def _exit_task_now() -> None:
    """In a task, after its exit handlers and those it inherited: end as `sys.exit(code)`
    would, without the interpreter tearing down the modules it inherited (torch and Lightning
    take a process that imported them 0.3 s more to exit, which a cold light task never
    imported). In the preloader itself, nothing."""
    code = _task_code
    if code is _NOT_A_TASK:
        return
    if isinstance(code, str):
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _end_with(conn: socket.socket) -> None:
    """Kill this process as soon as its relay is gone (killed with SIGKILL, say): it reads
    nothing from the socket, so the socket closing is the relay's end."""

    def watch() -> None:
        try:
            conn.recv(1)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="end-with-relay", daemon=True).start()


if __name__ == "__main__":
    # From the module's own name, not `__main__`: the tasks import it (task_started).
    from factory_lib.runs import preload

    preload.serve(Path(sys.argv[1]), int(sys.argv[2]))
