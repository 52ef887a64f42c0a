"""`factory serve`: a real server on 127.0.0.1 (a subprocess on a free port) for a real digits
champion, hot swap on promotion and rollback, traffic sampling, `factory drift --served` and
`factory loop --watch`. Every request goes to the loopback address and is bounded in count."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from factory_lib.data import load_splits
from factory_lib.runs.client import branch_name
from factory_lib.serve.batching import Batcher
from factory_lib.serve.inputs import BadRequest, numeric_rows, parse_body, table_rows
from factory_lib.serve.traffic import SamplingConfig, TrafficSampler, read_sample, sample_folder
from tests.conftest import EXAMPLE_DATA, ROOT, factory_cli, run_cycle, write_objective

NAME = "serve_digits"
WEAK = {"lr": 0.001, "width": 4, "depth": 1}
STRONG = {"lr": 0.03, "width": 32, "depth": 2}
SHAPE = (1, 8, 8)


# --- requests checked, without a server ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not JSON"),
        (b"\xff\xfe", 400, "not JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (b'{"inputs": [[1]], "extra": 1}', 422, "unknown field(s) 'extra'"),
        (b'{"input": [1], "inputs": [[1]]}', 422, "exactly one"),
        (b'{"inputs": []}', 422, "empty"),
        (b'{"inputs": 3}', 422, "must be a list"),
        (b'{"inputs": [[NaN]]}', 422, "NaN"),
        (b'{"inputs": [[-Infinity]]}', 422, "NaN or infinity"),
    ],
)
def test_bodies_are_refused_with_what_is_wrong(body: bytes, status: int, says: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_body(body)
    assert refused.value.status == status and says in refused.value.message


def test_rows_of_numbers_are_checked_and_named() -> None:
    row = list(range(64))

    def refusal(payload: Any) -> str:
        with pytest.raises(BadRequest) as refused:
            numeric_rows(parse_body(json.dumps(payload).encode()), SHAPE)
        assert refused.value.status == 422
        return refused.value.message

    assert "row of shape (63,)" in refusal({"inputs": [row[:63]]})
    assert (
        refusal({"inputs": [row, [*row[:5], "a", *row[6:]]]}) == "inputs[1][5]: not a number (str)"
    )
    assert refusal({"input": [*row[:3], None, *row[4:]]}) == "input[3]: not a number (null)"
    assert (
        refusal({"inputs": [row, row[:60]]}) == "inputs[1]: 60 numbers where the first row has 64"
    )
    assert refusal({"inputs": [{"a": 1}]}) == "inputs[0]: a row is a list of 64 numbers, not dict"
    huge = b'{"inputs": [[' + b", ".join([b"1"] * 7 + [b"1e999"] + [b"1"] * 56) + b"]]}"
    with pytest.raises(BadRequest, match=r"inputs\[0\]\[7\] is not a number the model can take"):
        numeric_rows(parse_body(huge), SHAPE)  # JSON's 1e999 reads as infinity
    assert "too large for float32" in refusal({"inputs": [[*row[:63], 1e300]]})
    with pytest.raises(BadRequest, match="at most 2 per request"):
        parse_body(json.dumps({"inputs": [row] * 3}).encode(), max_rows=2)
    # flat rows, shaped rows and one row all become float32 (n, 64)
    shaped = np.arange(64, dtype=np.float32).reshape(SHAPE).tolist()
    for payload, n in (({"inputs": [row, row]}, 2), ({"inputs": [shaped]}, 1), ({"input": row}, 1)):
        rows = numeric_rows(parse_body(json.dumps(payload).encode()), SHAPE)
        assert rows.shape == (n, 64) and rows.dtype == np.float32
        assert rows[0].tolist() == [float(v) for v in row]


def test_table_rows_name_unknown_and_missing_columns() -> None:
    columns = ("age", "city")
    ok = table_rows(parse_body(b'{"inputs": [{"age": 3, "city": null}]}'), columns)
    assert list(ok.columns) == ["age", "city"] and len(ok) == 1
    for body, says in (
        (b'{"inputs": [{"age": 3, "city": "x", "zip": 1}]}', "inputs[0]: unknown column(s) 'zip'"),
        (b'{"input": {"age": 3}}', "input: missing column(s) 'city'"),
        (b'{"inputs": [[3, "x"]]}', "inputs[0]: a row of this table is an object"),
        (b'{"inputs": [{"age": [3], "city": "x"}]}', "inputs[0].age: a value, not list"),
    ):
        with pytest.raises(BadRequest) as refused:
            table_rows(parse_body(body), columns)
        assert refused.value.message.startswith(says)


def test_concurrent_requests_share_model_calls_and_get_their_own_rows() -> None:
    calls: list[int] = []

    def run(rows: np.ndarray) -> tuple[list[Any], Any]:
        calls.append(len(rows))
        time.sleep(0.01)  # a model call long enough for requests to queue behind it
        return [float(r[0]) for r in rows], "v1"

    async def main() -> list[tuple[list[Any], Any]]:
        batcher = Batcher(run, max_rows=16, max_wait_s=0.005)
        batcher.start()
        try:
            requests = [np.full((1 + i % 3, 4), i, np.float32) for i in range(40)]
            return await asyncio.gather(*(batcher.submit(r) for r in requests))
        finally:
            await batcher.stop()

    answers = asyncio.run(main())
    assert [a for a, _ in answers] == [[float(i)] * (1 + i % 3) for i in range(40)]
    assert sum(calls) == sum(1 + i % 3 for i in range(40)) and max(calls) <= 16
    assert len(calls) < 40  # batched: fewer model calls than requests


def test_a_failing_model_call_fails_only_its_batch() -> None:
    def run(rows: np.ndarray) -> tuple[list[Any], Any]:
        if (rows < 0).any():
            raise RuntimeError("model broke")
        return [1] * len(rows), None

    async def main() -> tuple[Any, Any]:
        batcher = Batcher(run, max_rows=1, max_wait_s=0.0)
        batcher.start()
        try:
            bad = await asyncio.gather(
                batcher.submit(-np.ones((1, 2), np.float32)), return_exceptions=True
            )
            good = await batcher.submit(np.ones((1, 2), np.float32))
            return bad[0], good
        finally:
            await batcher.stop()

    bad, good = asyncio.run(main())
    assert isinstance(bad, RuntimeError) and good == ([1], None)


@pytest.fixture(params=["local", "s3"])
def sample_place(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder for the traffic sample: a local one, or a prefix on S3 (moto's server)."""
    if request.param == "local":
        return str(tmp_path / "traffic")
    aws = request.getfixturevalue("aws")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for key, value in aws.env.items():
        monkeypatch.setenv(key, value)
    bucket = f"traffic-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    aws.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/CycleFlow/traffic/digits"


def test_the_traffic_sample_is_rotated_bounded_and_read_since(sample_place: str) -> None:
    where = sample_place
    config = SamplingConfig(where, rate=0.5, rows_per_file=10, max_files=3)
    sampler = TrafficSampler(config, seed=0)
    for i in range(100):
        sampler.offer(np.full((2, 4), i, np.float32), "c001-t00")
    sampler.wait()  # the files are written in the sampler's own thread
    assert len(sample_folder(where).names()) == 3  # rotated: the newest three files are kept
    assert sampler.kept == pytest.approx(100, abs=30)  # half of 200 rows
    sample = read_sample(where)
    assert 30 <= len(sample.x) <= 33 and sample.files == 3  # 10 rows a file, or one pair more
    assert sample.x.min() > 30  # the oldest rows were rotated away
    later = time.time()
    assert read_sample(where, since=later).files == 0
    every = TrafficSampler(SamplingConfig(where, rate=1.0, rows_per_file=10, max_files=3))
    every.offer(np.full((4, 4), -1, np.float32), "c001-t00")
    assert every.wait() == [] and read_sample(where, since=later).files == 0  # not a file yet
    assert every.flush("c001-t00") is not None  # as at shutdown
    assert read_sample(where, since=later).x.tolist() == [[-1.0] * 4] * 4
    off = TrafficSampler(SamplingConfig(None))
    off.offer(np.ones((5, 4), np.float32), "c001-t00")
    assert off.kept == 0
    with pytest.raises(ValueError, match="between 0 and 1"):
        TrafficSampler(SamplingConfig(where, rate=1.5))


# --- the real server, for a real digits champion ---------------------------------------------


@dataclass
class Served:
    objective: Path
    url: str
    sample_dir: Path
    log: Path
    x: np.ndarray  # the held-out split's raw rows, as `predict` takes them

    def post(self, payload: Any, client: httpx.Client | None = None) -> httpx.Response:
        return (client or httpx).post(f"{self.url}/predict", json=payload, timeout=30)

    def model(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/model", timeout=30).json()
        return answer

    def wait_for_model(self, trial_id: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.model()["trial_id"] != trial_id:
            assert time.monotonic() < deadline, f"still serving {self.model()['trial_id']}"
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Cycle 1 of a digits search (one weak trial, approved: the first champion; promotions
    wait for approval), served by `factory serve` in a subprocess on a free loopback port,
    every row sampled; stopped at the end."""
    from factory_lib.objective import load_objective

    tmp = tmp_path_factory.mktemp("serve")
    objective = write_objective(
        tmp,
        NAME,
        data={"dataset": "digits", "val_fraction": 0.15, "test_fraction": 0.2},
        reward={"constraints": ["params <= 100000"]},
        budget={"trials_per_cycle": 1},
        promotion={"require_approval": True},
        proposers={"enqueue": [WEAK, STRONG, STRONG]},
    )
    run_cycle(objective, fresh=True)
    approved = factory_cli("approve", "--objective", NAME)
    assert approved.returncode == 0, approved.stderr
    spec = load_objective(objective)
    x = load_splits(spec.data, spec.task).raw_x["test"]
    sample_dir, log = tmp / "traffic", tmp / "serve.log"
    options = ["--poll", "1", "--sample-rate", "1", "--sample-rows", "100"]
    with serving(NAME, log, *options, "--sample-dir", str(sample_dir)) as url:
        yield Served(objective, url, sample_dir, log, x)


@contextmanager
def serving(objective_name: str, log: Path, *options: str) -> Iterator[str]:
    """`factory serve` in a subprocess on a free loopback port, until the block ends: its URL."""
    port = _free_port()
    command = [sys.executable, "-m", "factory_lib.ops.cli", "serve", "--objective", objective_name]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*command, "--port", str(port), *options],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()  # uvicorn shuts down gracefully: the sample's last rows are written
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_predictions_equal_the_champions_predict(served: Served) -> None:
    from factory_lib.runs.champions import load_champion
    from factory_lib.serve.model import Current, ServedModel, current_champion

    expected = load_champion(NAME).predict(served.x).tolist()
    got: list[Any] = []
    with httpx.Client() as client:
        for start in range(0, len(served.x), 100):
            answer = served.post({"inputs": served.x[start : start + 100].tolist()}, client)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == "c001-t00"
            got += answer.json()["predictions"]
        one = served.post({"input": served.x[7].reshape(SHAPE).tolist()}, client).json()
    assert got == expected
    assert one["prediction"] == expected[7]
    # The server runs the checked ONNX export; without exports, the network itself: same answers.
    current = current_champion(NAME)
    assert ServedModel(current).version.runtime == "onnxruntime"
    torch_served = ServedModel(Current(current.bundle.model_copy(update={"exports": None}), ""))
    assert torch_served.version.runtime == "torch"
    assert torch_served.predict(torch_served.encode(served.x)) == expected


@pytest.mark.slow
def test_every_bad_request_gets_its_4xx_and_the_server_stays_up(served: Served) -> None:
    row = served.x[0].tolist()
    cases: list[tuple[bytes, int, str]] = [
        (json.dumps({"inputs": [row[:50]]}).encode(), 422, "a row must have 64 numbers"),
        (json.dumps({"inputs": [[*row[:63], "x"]]}).encode(), 422, "inputs[0][63]: not a number"),
        (b'{"inputs": [[' + b"NaN, " * 63 + b"NaN]]}", 422, "NaN"),
        (b'{"input": [' + b"1, " * 63 + b"Infinity]}", 422, "NaN or infinity"),
        (json.dumps({"inputs": [row], "model": "c000"}).encode(), 422, "unknown field(s) 'model'"),
        (b"{oops", 400, "not JSON"),
        (json.dumps({"inputs": [row] * 1025}).encode(), 413, "at most 1024"),
        (b'{"inputs": [' + b"0," * 600_000 + b"0]}", 413, "over the limit"),
    ]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for body, status, says in cases:
            answer = client.post("/predict", content=body)
            assert (answer.status_code, says in answer.json()["error"]) == (status, True), body[:80]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds as it streams
            yield b'{"inputs": ['
            for _ in range(200):
                yield b"0," * 5_000
            yield b"0]}"

        assert client.post("/predict", content=chunks()).status_code == 413
        assert client.get("/predict").status_code == 405
        before = _metric(client, 'factory_serve_errors_total{status="422"}')
        for i in range(200):  # bounded: the benchmark sends 1,000
            body, status, _ = cases[i % 5]
            assert client.post("/predict", content=body).status_code == status
        assert _metric(client, 'factory_serve_errors_total{status="422"}') == before + 200
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/predict", json={"input": row}).status_code == 200


def _settled_rows(folder: Path) -> int:
    """The rows in the sample once no file has been added for half a second (10 s at most)."""
    deadline, last = time.monotonic() + 10, -1
    while time.monotonic() < deadline:
        rows = len(read_sample(folder).x)
        if rows == last:
            return rows
        last = rows
        time.sleep(0.5)
    return last


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
def test_model_and_metrics_say_what_is_served(served: Served) -> None:
    from factory_lib.runs.champions import load_champion

    package = load_champion(NAME).package
    model = served.model()
    assert (model["trial_id"], model["version"]) == ("c001-t00", package.weights_sha)
    assert model["promoted_in_cycle"] == 1 and model["runtime"] == "onnxruntime"
    assert model["branch"] == branch_name()  # the search served: this user's own
    assert model["model_card"]["trial"] == "c001-t00"
    assert model["metrics"]["test"]["accuracy"] == model["metric"]["test"]
    text = httpx.get(f"{served.url}/metrics").text
    assert 'trial_id="c001-t00"' in text and "factory_serve_predict_seconds_bucket" in text
    assert 'factory_serve_requests_total{endpoint="/predict",status="200"}' in text


@pytest.mark.slow
def test_approval_and_rollback_swap_under_load_without_a_failed_request(served: Served) -> None:
    from factory_lib.runs.champions import load_version

    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def stream(offset: int) -> None:  # bounded: 100 requests a second at most, 30,000 in all
        with httpx.Client(timeout=30) as client:
            for i in range(30_000):
                if stop.wait(0.01):
                    return
                start = (offset + 8 * i) % (len(served.x) - 8)
                try:
                    answer = served.post({"inputs": served.x[start : start + 8].tolist()}, client)
                    seen.append((answer.status_code, answer.json().get("model", answer.text)))
                except httpx.HTTPError as exc:
                    seen.append((0, repr(exc)))

    clients = [threading.Thread(target=stream, args=(k * 100,)) for k in range(2)]
    for c in clients:
        c.start()
    try:
        second = run_cycle(served.objective)["end"].task.data
        assert second.decision.status == "pending", second.decision.reason
        time.sleep(3)  # three polls: a promotion awaiting approval is not served
        assert served.model()["trial_id"] == "c001-t00"
        approve = factory_cli("approve", "--objective", NAME)
        assert approve.returncode == 0, approve.stderr
        served.wait_for_model("c002-t00")
        time.sleep(1.1)  # registry events are stamped to the second: keep them in order
        rollback = factory_cli("rollback", "--objective", NAME, "--to", "c001-t00")
        assert rollback.returncode == 0, rollback.stderr
        served.wait_for_model("c001-t00")
        time.sleep(0.5)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=60)
    failed = [s for s in seen if s[0] != 200]
    assert not failed, failed[:5]
    models = [m for _, m in seen]
    assert "c002-t00" in models and models[-1] == "c001-t00"
    assert models.index("c002-t00") < len(models) - models[::-1].index("c001-t00") - 1
    assert "swapped c001-t00 -> c002-t00" in served.log.read_text()
    assert "swapped c002-t00 -> c001-t00" in served.log.read_text()
    answer = served.post({"inputs": served.x.tolist()}).json()
    assert answer["predictions"] == load_version(NAME, "c001-t00").predict(served.x).tolist()


@pytest.mark.slow
def test_sampled_traffic_feeds_drift_served_and_the_watch_starts_one_cycle(
    served: Served, datastore: str
) -> None:
    from metaflow.cards import get_cards

    from factory_lib.runs.client import FLOW_NAME, cycle_runs

    for path in served.sample_dir.glob("*.npz"):  # what earlier tests sent: a new sample
        path.unlink()
    with httpx.Client() as client:
        for start in range(0, 300, 50):  # the held-out split as it is: 300 rows, 3 files
            assert served.post({"inputs": served.x[start : start + 50].tolist()}, client)
    rows = _settled_rows(served.sample_dir)  # the server writes files in a thread of its own
    assert rows >= 200, served.log.read_text()[-2000:]
    drift = ["drift", "--objective", NAME, "--served", "--sample-dir", str(served.sample_dir)]
    same = factory_cli(*drift, "--json")
    assert same.returncode == 0, same.stderr
    report = json.loads(same.stdout)
    assert (report["rows"], report["source"], report["warranted"]) == (
        rows,
        "served traffic",
        False,
    )

    shifted = np.clip(served.x + 6.0, 0, 22)  # every pixel brighter: the world moved
    with httpx.Client() as client:
        for start in range(0, 300, 50):
            assert served.post({"inputs": shifted[start : start + 50].tolist()}, client)
    assert _settled_rows(served.sample_dir) >= rows + 200
    moved = factory_cli(*drift)
    assert moved.returncode == 0, moved.stderr
    assert "a new cycle is warranted" in moved.stdout and "features drifted" in moved.stdout

    before = len(cycle_runs(FLOW_NAME, NAME))
    watch = subprocess.run(  # from the datastore's root, where the Client API reads cards
        [sys.executable, "-m", "factory_lib.ops.cli", "loop", "--cycles", "1", "--config",
         str(served.objective), "--watch", "--watch-every", "1", "--watch-checks", "2",
         "--sample-dir", str(served.sample_dir)],
        cwd=datastore, env=os.environ.copy(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert watch.returncode == 0, watch.stderr[-3000:]
    assert watch.stdout.count("starting a cycle") == 1, watch.stdout
    assert "no served traffic" in watch.stdout.splitlines()[-2]  # the second check: none since
    runs = cycle_runs(FLOW_NAME, NAME)
    assert len(runs) == before + 1
    trigger = [t for t in runs[0].user_tags if t.startswith("trigger:drift:")]
    assert trigger and "features drifted" in trigger[0]
    html = get_cards(runs[0]["end"].task, id="cycle")[0].get()
    found = re.search(r'window\.__MF_DATA__\["[^"]+"\] = "([^"]+)"', html)
    assert found, "no card data in the HTML"
    card = base64.b64decode(found[1]).decode()  # the blank card's components, as JSON
    assert "**Started by** drift: served traffic since cycle" in card
    assert "features drifted" in card


@pytest.mark.slow
def test_a_table_champion_takes_rows_as_objects_of_column_values(tmp_path: Path) -> None:
    from factory_lib.objective import load_objective
    from factory_lib.runs.champions import load_champion

    name = "serve_penguins"
    objective = write_objective(
        tmp_path,
        name,
        base="penguins",
        data={"table": str(EXAMPLE_DATA / "penguins.csv")},
        budget={"trials_per_cycle": 1, "max_epochs": 3},
    )
    run_cycle(objective, fresh=True)
    spec = load_objective(objective)
    frame = load_splits(spec.data, spec.task).raw_x["test"]
    rows = json.loads(frame.to_json(orient="records"))  # missing values become null
    assert any(v is None for row in rows for v in row.values())
    expected = load_champion(name).predict(frame).tolist()
    assert set(expected) <= {"Adelie", "Chinstrap", "Gentoo"}
    with serving(name, tmp_path / "serve.log", "--no-sample") as url:
        answer = httpx.post(f"{url}/predict", json={"inputs": rows}, timeout=30)
        assert answer.json()["predictions"] == expected
        one = httpx.post(f"{url}/predict", json={"input": rows[3]}, timeout=30).json()
        assert one["prediction"] == expected[3]
        for row, says in (
            ({**rows[0], "beak": 1.0}, "inputs[0]: unknown column(s) 'beak'"),
            ({**rows[0], "bill_length_mm": "long"}, "column 'bill_length_mm' is numeric"),
            ([1, 2, 3], "inputs[0]: a row of this table is an object"),
        ):
            refused = httpx.post(f"{url}/predict", json={"inputs": [row]}, timeout=30)
            assert refused.status_code == 422 and says in refused.json()["error"], refused.text


@pytest.mark.slow
def test_an_internal_error_is_a_logged_500_and_the_next_request_is_answered(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    from factory_lib.serve.app import ServeConfig, create_app

    app = create_app(ServeConfig(NAME))  # in this process, to make its model fail once
    model = app.state.slot.model
    works = model.predict

    def fails(rows: np.ndarray) -> list[Any]:
        raise RuntimeError("the runtime fell over")

    async def main() -> tuple[httpx.Response, httpx.Response, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            model.predict = fails
            failed = await client.post("/predict", json={"input": served.x[0].tolist()})
            model.predict = works
            answered = await client.post("/predict", json={"input": served.x[0].tolist()})
            return failed, answered, (await client.get("/metrics")).text

    failed, answered, metrics = asyncio.run(main())
    assert failed.status_code == 500 and "RuntimeError" in failed.json()["error"]
    assert answered.status_code == 200
    assert 'factory_serve_errors_total{status="500"} 1.0' in metrics
    assert "internal error answering /predict" in caplog.text
    assert "the runtime fell over" in caplog.text  # the traceback is in the log
