"""Preloaded task starts (factory_lib.runs.preload): a real preloader, real tasks handed over
to it, and a real Metaflow run whose tasks start from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from factory_lib.runs import preload
from tests.conftest import FLOW

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TASK = FIXTURES / "preload_task.py"
WAIT_S = 60.0  # the preloader imports torch and Lightning first: seconds on 2 cores


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A child of this process that ended but was not reaped yet is gone too.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def _until(condition: Any, seconds: float = WAIT_S) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.fixture(scope="module")
def preloader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A preloader for this process, as start_preloader starts one; the environment its
    tasks get."""
    path = tmp_path_factory.mktemp("preloaded") / "p.sock"
    env = {**os.environ, "PYTHONUNBUFFERED": "x"}
    proc = subprocess.Popen(
        [sys.executable, "-m", preload.__name__, str(path), str(os.getpid())],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert _until(path.exists, 10), "the preloader never listened"
    yield {**env, preload.SOCKET_VARIABLE: str(path), "METAFLOW_RUN_ID": "42"}
    proc.terminate()
    assert proc.wait(10) == 0
    assert not path.exists(), "the preloader left its socket behind"


def _task(env: dict[str, str], action: str, step: str = "work") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(TASK), "step", step, action],
        env=env,
        cwd=FIXTURES,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the task printed nothing; stderr: {proc.stderr.read() if proc.stderr else ''}"
    report: dict[str, Any] = json.loads(line)
    return report


def test_a_task_runs_in_the_preloader_with_its_own_streams_directory_and_exit_code(
    preloader: dict[str, str],
) -> None:
    proc = _task(preloader, "exit-3")
    report = _report(proc)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 3
    assert report["preloaded"] and report["pid"] != proc.pid
    assert report["torch_imported"], "torch was not imported beforehand"
    assert report["cwd"] == str(FIXTURES)
    assert report["run_id"] == "42"  # the runtime's per-task variables come with it
    assert report["argv"] == [str(TASK), "step", "work", "exit-3"]
    # Metaflow's ForeachFrame, put on __main__ when the preloader imported Metaflow
    assert report["foreach_frame_on_main"]
    assert report["started"] < report["now"]  # the relay's start: before the fork
    assert "a line on stderr" in err and "not preloaded" not in err
    assert _gone(report["pid"])


def test_a_task_error_is_its_traceback_and_exit_code_1(preloader: dict[str, str]) -> None:
    proc = _task(preloader, "raise")
    assert _report(proc)["preloaded"]
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 1
    assert "RuntimeError: the task's own error" in err


def test_a_task_killed_by_a_signal_ends_its_relay_with_the_same_signal(
    preloader: dict[str, str],
) -> None:
    proc = _task(preloader, "sigterm-self")
    assert _report(proc)["preloaded"]
    proc.communicate(timeout=WAIT_S)
    assert proc.returncode == -signal.SIGTERM


def test_a_worker_a_task_spawns_runs_in_the_task_not_as_another_task(
    preloader: dict[str, str],
) -> None:
    """A `spawn` worker imports the flow file with the task's command line: it once handed
    itself over as a task again, which spawned a worker, which handed itself over..."""
    proc = _task(preloader, "spawn-worker")
    report = _report(proc)
    out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err
    assert report["preloaded"]
    (line,) = out.splitlines()
    assert json.loads(line)["argv"][1:] == ["step", "work", "spawn-worker"]
    assert "not preloaded" not in err


def test_a_task_exits_through_the_exit_handlers_it_inherited(preloader: dict[str, str]) -> None:
    """multiprocessing, imported in the preloader, ends a task's daemonic workers at exit."""
    proc = _task(preloader, "daemon-worker")
    assert _report(proc)["preloaded"]
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0
    worker = json.loads(out.splitlines()[-1])["worker"]
    assert _until(lambda: _gone(worker), 10), "the task's daemonic worker outlived it"


def test_a_task_killed_from_outside_ends_its_relay_as_killed(preloader: dict[str, str]) -> None:
    proc = _task(preloader, "wait")
    os.kill(_report(proc)["pid"], signal.SIGKILL)  # as the out-of-memory killer would
    proc.communicate(timeout=WAIT_S)
    assert proc.returncode == -signal.SIGKILL  # what the runtime records as the task's death


def test_a_signal_to_the_relay_reaches_the_task(preloader: dict[str, str]) -> None:
    proc = _task(preloader, "wait")
    report = _report(proc)
    proc.send_signal(signal.SIGTERM)  # what the runtime's @timeout or a kill sends
    proc.communicate(timeout=WAIT_S)
    assert proc.returncode == -signal.SIGTERM
    assert _until(lambda: _gone(report["pid"]), 10)


def test_a_relay_killed_with_sigkill_takes_its_task_with_it(preloader: dict[str, str]) -> None:
    proc = _task(preloader, "wait")
    report = _report(proc)
    proc.kill()
    proc.communicate(timeout=WAIT_S)
    assert _until(lambda: _gone(report["pid"]), 10), "the task outlived its relay"


def test_another_environment_or_the_start_step_starts_cold(preloader: dict[str, str]) -> None:
    proc = _task({**preloader, "FACTORY_SOMETHING": "1"}, "exit-3")
    report = _report(proc)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 3
    assert not report["preloaded"] and report["pid"] == proc.pid
    assert "not preloaded (its environment sets FACTORY_SOMETHING otherwise): starting cold" in err

    proc = _task(preloader, "exit-3", step="start")  # before the imports could be done
    report = _report(proc)
    _, err = proc.communicate(timeout=WAIT_S)
    assert not report["preloaded"] and not report["torch_imported"]
    assert "not preloaded" not in err  # not asked: nothing to say


def test_without_a_preloader_a_task_starts_cold_and_says_why(tmp_path: Path) -> None:
    env = {**os.environ, preload.SOCKET_VARIABLE: str(tmp_path / "none.sock")}
    proc = _task(env, "exit-3")
    report = _report(proc)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 3 and not report["preloaded"]
    assert "not preloaded ([Errno 2] No such file or directory): starting cold" in err


@pytest.mark.parametrize(
    ("argv", "switch", "expected"),
    [
        (["cycle.py", "run"], None, True),
        (["cycle.py", "--config", "objective", "o.yaml", "resume"], None, True),
        (["cycle.py", "run"], "0", False),
        (["cycle.py", "run"], "Off", False),
        (["cycle.py", "run"], "1", True),
        (["cycle.py", "run", "--with", "batch"], None, False),
        (["cycle.py", "--with=kubernetes:cpu=2", "run"], None, False),
        (["cycle.py", "--config", "objective", "batchnorm.yaml", "run"], None, True),
        (["cycle.py", "step", "train", "--run-id", "1"], None, False),
        (["cycle.py", "card", "get", "1/end"], None, False),
    ],
)
def test_which_commands_start_a_preloader(
    argv: list[str], switch: str | None, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if switch is None:
        monkeypatch.delenv(preload.SWITCH_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(preload.SWITCH_VARIABLE, switch)
    monkeypatch.setattr(preload, "glob", lambda _pattern: [])  # no NVIDIA device
    assert preload.wanted(argv) is expected
    monkeypatch.setattr(preload, "glob", lambda _pattern: ["/dev/nvidia0"])
    assert preload.wanted(argv) is False


def test_a_mistyped_switch_is_refused_before_the_run(tmp_path: Path) -> None:
    env = {**os.environ, preload.SWITCH_VARIABLE: "flase"}
    done = subprocess.run(
        [sys.executable, FLOW, "run"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "FACTORY_PRELOAD='flase' is neither on nor off: 1 preloads a local run's tasks (the "
        "default), 0 starts each of them cold"
    )


def test_the_preloader_ends_with_its_run_and_the_next_removes_what_a_killed_one_left(
    tmp_path: Path,
) -> None:
    """Its run's process killed with SIGKILL (no atexit): the preloader ends by itself, and
    the next run's start removes the sockets of runs killed with their preloader."""
    folder = tmp_path / f"factory-{os.getuid()}"
    folder.mkdir()
    dead = subprocess.Popen(["true"])  # a pid no process has now (reused only rarely)
    dead.wait()
    stale, alive = folder / f"preload-{dead.pid}.sock", folder / f"preload-{os.getpid()}.sock"
    stale.touch()
    alive.touch()
    run = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from factory_lib.runs.preload import start_preloader; "
            "print(start_preloader(['cycle.py', 'run']), flush=True); time.sleep(60)",
        ],
        env={
            **{k: v for k, v in os.environ.items() if k != preload.SWITCH_VARIABLE},
            "TMPDIR": str(tmp_path),
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    assert run.stdout is not None
    path = Path(run.stdout.readline().strip())
    assert path.parent == folder
    assert not stale.exists() and alive.exists()
    assert _until(path.exists, 10)
    run.kill()
    run.communicate(timeout=10)
    assert _until(lambda: not path.exists()), "the preloader outlived its run"


@pytest.mark.slow
def test_a_metaflow_run_starts_its_tasks_preloaded_and_retries_a_killed_one(tmp_path: Path) -> None:
    from metaflow import Run, namespace

    run_id_file = tmp_path / "run-id"
    env = {k: v for k, v in os.environ.items() if k != preload.SWITCH_VARIABLE}
    flow = FIXTURES / "preload_flow.py"
    done = subprocess.run(
        [sys.executable, str(flow), "run", "--run-id-file", str(run_id_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "not preloaded" not in done.stdout + done.stderr
    namespace(None)
    run = Run(f"PreloadFlow/{run_id_file.read_text().strip()}")
    assert run["start"].task.data.how == {"preloaded": False, "torch_imported": False}
    assert run["join"].task.data.values == [0, 10]
    work = sorted(run["join"].task.data.work_how, key=lambda h: h["attempt"])
    assert work == [
        {"preloaded": True, "torch_imported": True, "attempt": 0},
        {"preloaded": True, "torch_imported": True, "attempt": 1},  # the retry of the killed one
    ]
    for step in ("join", "end"):
        assert run[step].task.data.how == {"preloaded": True, "torch_imported": True}
