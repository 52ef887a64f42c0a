"""Scale-out against a local moto server: the guide's commands, doctor, deployment, S3 cycles.

The commands come from docs/scale-out.md (tests/scale_doc.py), so what a user runs is what runs
here. Batch jobs cannot run without Docker: moto records them and marks them failed, and the
tests assert on what Metaflow submitted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from factory_lib.history import check_extends
from tests.aws import Aws
from tests.conftest import FLOW, ROOT, run_and_kill_after_first, write_objective
from tests.scale_doc import ARGO, SFN, doc_command

PRODUCTION = "dark_factory.prod"  # the flow's @project and its production branch

pytestmark = pytest.mark.slow
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/dark-factory:latest"
# The steps that train or export carry the objective's resources and retry a task that died
# (flows/cycle.py: on_train_resources, TASK_RETRIES); the others aggregate and ask for neither.
HEAVY_STEPS = ("train", "measure")
LIGHT_STEPS = ("start", "join", "gate", "decide", "end")
TASK_RETRIES = 2


class _Ping(BaseHTTPRequestHandler):
    """The metadata service's /ping: a boundary we cannot reach here."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path.endswith("/ping") else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def metadata_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Ping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def profile(aws: Aws, network: dict[str, str], metadata_url: str) -> dict[str, str]:
    """The guide's steps 1-4 against moto; the environment a user then has."""
    aws.shell(doc_command("aws cloudformation create-stack"), env=network)
    aws.shell(doc_command("aws cloudformation wait stack-create-complete"))
    aws.shell(doc_command("aws ecr create-repository"))
    # `docker push` stands in: the image's manifest lands in the repository
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {},
            "layers": [],
        }
    )
    aws.client("ecr").put_image(
        repositoryName="dark-factory", imageManifest=manifest, imageTag="latest"
    )
    out = aws.shell(
        doc_command("factory profile"), env={"IMAGE": IMAGE, "METADATA_URL": metadata_url}
    )
    assert "METAFLOW_PROFILE=aws" in out
    aws.shell(doc_command("aws secretsmanager create-secret"), env={"ANTHROPIC_API_KEY": "k"})
    return {
        **aws.env,
        "METAFLOW_PROFILE": "aws",
        # the profile names the metadata service; the flows here keep metadata local (the
        # service is not reachable here) while everything else comes from the profile
        "METAFLOW_DEFAULT_METADATA": "local",
    }


def _doctor(aws: Aws, name: str) -> subprocess.CompletedProcess[str]:
    command = doc_command("factory doctor").replace("--profile aws", f"--profile {name}")
    return subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **aws.env},
        timeout=120,
    )


def test_doctor_passes_on_the_stack(aws: Aws, profile: dict[str, str]) -> None:
    proc = _doctor(aws, "aws")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1] == "all checks passed"
    assert re.search(r"^ok +compute environment .*GPU instance types \['g5", proc.stdout, re.M)
    assert re.search(r"^ok +image .*: in ECR$", proc.stdout, re.M)


def test_doctor_names_each_problem(aws: Aws, profile: dict[str, str]) -> None:
    batch, iam = aws.client("batch"), aws.client("iam")
    settings = json.loads((Path(aws.env["METAFLOW_HOME"]) / "config_aws.json").read_text())
    cpu_env = batch.create_compute_environment(
        computeEnvironmentName="cpu-only",
        type="UNMANAGED",
        state="ENABLED",
        serviceRole=iam.list_roles()["Roles"][0]["Arn"],
    )
    # moto has no instance types for an unmanaged environment: the queue still lacks GPUs
    batch.create_job_queue(
        jobQueueName="cpu-queue",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[
            {"order": 1, "computeEnvironment": cpu_env["computeEnvironmentArn"]}
        ],
    )
    broken = {
        **settings,
        "METAFLOW_DATASTORE_SYSROOT_S3": "s3://no-such-bucket/metaflow",
        "METAFLOW_BATCH_JOB_QUEUE": "cpu-queue",
        "METAFLOW_SFN_IAM_ROLE": "arn:aws:iam::123456789012:role/gone",
        "METAFLOW_BATCH_CONTAINER_IMAGE": IMAGE.replace(":latest", ":missing"),
    }
    del broken["METAFLOW_SERVICE_URL"]
    (Path(aws.env["METAFLOW_HOME"]) / "config_broken.json").write_text(json.dumps(broken))
    proc = _doctor(aws, "broken")
    assert proc.returncode == 1
    problems = [ln for ln in proc.stdout.splitlines() if ln.startswith("problem")]
    expected = [
        "S3 bucket no-such-bucket: not usable",
        "compute environment cpu-only has no GPU instance types",
        "Batch job queue cpu-queue cannot run GPU jobs",
        "METAFLOW_SFN_IAM_ROLE arn:aws:iam::123456789012:role/gone",
        "image " + IMAGE.replace(":latest", ":missing"),
        "METAFLOW_SERVICE_URL is not set",
    ]
    assert len(problems) == len(expected), proc.stdout
    for line, start in zip(problems, expected, strict=True):
        assert line.split(None, 1)[1].startswith(start), (line, start)
    assert proc.stdout.splitlines()[-1] == "6 problem(s) in profile broken"


def test_step_functions_deploys_on_a_schedule(aws: Aws, profile: dict[str, str]) -> None:
    aws.shell(doc_command(f"{SFN} step-functions create\n"), env=profile)
    # deployed as the production search: named for the @project branch, so a deployment of
    # another branch is a state machine of its own
    rule = aws.client("events").describe_rule(Name=f"{PRODUCTION}.CycleFlow")
    assert rule["ScheduleExpression"] == "cron(0 */6 * * ? *)"
    machines = aws.client("stepfunctions").list_state_machines()["stateMachines"]
    assert [m["name"] for m in machines] == [f"{PRODUCTION}.CycleFlow"]

    definition = json.loads(
        aws.shell(doc_command(f"{SFN} step-functions create --only-json"), env=profile)
    )
    assert definition["States"]["*train"]["Type"] == "Map"
    assert definition["States"]["*measure"]["Type"] == "Map"
    jobs = _batch_states(definition["States"])
    assert set(jobs) == {*HEAVY_STEPS, *LIGHT_STEPS}
    for name, job in jobs.items():
        heavy = name in HEAVY_STEPS
        overrides = job["ContainerOverrides"]
        assert ({"Type": "GPU", "Value": "1"} in overrides["ResourceRequirements"]) == heavy, name
        # @retry is the Batch job's attempts (the state's own Retry, on every step, is for
        # Batch API errors only) and the task's retries of user code
        assert (job["RetryStrategy"]["Attempts"] > TASK_RETRIES) == heavy, name
        retries = TASK_RETRIES if heavy else 0
        assert f"--max-user-code-retries {retries} " in " ".join(overrides["Command"]), name


def test_argo_template_has_foreach_gpu_and_self_trigger(aws: Aws, profile: dict[str, str]) -> None:
    home = Path(aws.env["METAFLOW_HOME"])
    settings = json.loads((ROOT / "infra" / "profiles" / "config_argo.json").read_text())
    aws_root = json.loads((home / "config_aws.json").read_text())["METAFLOW_DATASTORE_SYSROOT_S3"]
    settings["METAFLOW_DATASTORE_SYSROOT_S3"] = aws_root
    (home / "config_argo.json").write_text(json.dumps(settings))
    env = {**profile, "METAFLOW_PROFILE": "argo"}
    template = json.loads(
        aws.shell(doc_command(f"{ARGO} argo-workflows create --only-json"), env=env)
    )
    templates = {t["name"]: t for t in template["spec"]["templates"]}
    dag = {t["name"]: t for t in templates["CycleFlow"]["dag"]["tasks"]}
    assert "num-splits" in dag["start-foreach-trial-groups"]["withParam"]
    assert "num-splits" in dag["gate-foreach-measure-jobs"]["withParam"]
    for name in (*HEAVY_STEPS, *LIGHT_STEPS):
        heavy = name in HEAVY_STEPS
        container = templates[name]["container"]
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert gpus == ("1" if heavy else None), name
        retry = templates[name].get("retryStrategy", {"limit": 0})
        assert (retry["limit"] >= TASK_RETRIES) == heavy, name
        retries = TASK_RETRIES if heavy else 0
        assert f"--max-user-code-retries {retries} " in json.dumps(container), name
    triggers = json.loads(template["metadata"]["annotations"]["metaflow/triggers"])
    # each production cycle starts the next production cycle, and no other branch's
    assert [t["name"] for t in triggers] == [f"metaflow.{PRODUCTION}.CycleFlow.end"]


def test_cycles_on_s3_survive_a_crash_and_resume_on_batch(
    aws: Aws, profile: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metaflow import Flow, Runner, namespace

    from factory_lib.runs.client import latest_cycle

    for key, value in profile.items():
        monkeypatch.setenv(key, value)  # this process's Client API reads S3 through moto too
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")  # no Docker: Batch jobs fail
    objective = write_objective(tmp_path, "s3-cycle", resources={"gpu": 1}, promotion={"seeds": 2})
    deployment = ["--config", "deployment", "infra/deploy/step-functions.yaml"]

    # 1. a whole cycle on S3, with the Anthropic key fetched by @secrets from Secrets Manager
    first = subprocess.run(
        ["python", FLOW, "--config", "objective", str(objective), *deployment, "run", "--fresh"],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    namespace(None)
    state = latest_cycle("CycleFlow", "s3-cycle")
    assert state is not None and state.cycle == 1 and len(state.history) == 3
    root = json.loads((Path(aws.env["METAFLOW_HOME"]) / "config_aws.json").read_text())
    bucket = root["METAFLOW_DATASTORE_SYSROOT_S3"].split("/")[2]
    stored = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix="metaflow/CycleFlow/")
    assert stored["KeyCount"] > 0

    # 2. the next cycle crashes mid-foreach; resuming it on Batch submits the unfinished trials
    killed = run_and_kill_after_first("train", objective, profile)
    assert not Flow("CycleFlow")[killed].successful
    resume_on_batch = doc_command("python flows/cycle.py resume --with batch")
    on_batch = _sh(f"{resume_on_batch} --origin-run-id {killed}", profile)
    assert on_batch.returncode != 0  # moto cannot run the jobs
    batch = aws.client("batch")
    failed = batch.list_jobs(jobQueue=_queue(aws), jobStatus="FAILED")["jobSummaryList"]
    train_ids = [j["jobId"] for j in failed if "train" in j["jobName"]]
    assert train_ids, [j["jobName"] for j in failed]
    job = batch.describe_jobs(jobs=train_ids[:1])["jobs"][0]
    command = " ".join(job["container"]["command"])
    assert "step train" in command and killed in command
    definition = batch.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])
    container = definition["jobDefinitions"][0]["containerProperties"]
    assert container["image"] == IMAGE
    # each unfinished trial's task was tried on Batch as often as @retry allows, with a GPU;
    # @catch then recorded it locally and the join went to Batch, without one
    asked = _gpus_asked(_run_id(on_batch))
    assert set(asked) == {"train", "join"}, asked
    assert asked["train"] and all(asked["train"]) and len(asked["train"]) % (TASK_RETRIES + 1) == 0
    assert asked["join"] == [False]

    # 3. resumed locally, the cycle finishes with the trial finished before the crash reused
    with Runner(FLOW, show_output=False, cwd=str(ROOT), env=profile).resume(
        origin_run_id=killed
    ) as running:
        assert running.status == "successful", running.stderr[-3000:]
        resumed = running.run
    assert any(t.origin_pathspec is not None for t in resumed["train"])
    data = resumed["end"].task.data
    assert data.cycle == 2 and len(data.history) == 6
    check_extends(state.history, data.history)
    latest = latest_cycle("CycleFlow", "s3-cycle")
    assert latest is not None and latest.run_pathspec == resumed.pathspec

    # 4. the cycle's card was stored in S3 too, and reads back through the Client API
    from tests.test_explore import _card_html, _card_payload

    card = json.dumps(_card_payload(_card_html(resumed["end"].task)))
    assert all(r.trial_id in card for r in data.records)
    assert "data:image/png;base64" in card

    # 5. a cycle that crashes once its gate has listed the measure jobs: resumed on Batch, each
    # re-measurement over seeds (and the export) is a GPU job retried like train; decide is not.
    # The train tasks re-measure their own best, so raising promotion.seeds to 3 is what leaves
    # the gate a re-measurement to list: the champion's, measured over two seeds so far.
    write_objective(tmp_path, "s3-cycle", resources={"gpu": 1}, promotion={"seeds": 3})
    killed = run_and_kill_after_first("gate", objective, profile)
    jobs = Flow("CycleFlow")[killed]["gate"].task.data.measure_jobs
    assert [j.kind for j in jobs].count("seeds") >= 1, jobs
    on_batch = _sh(f"{resume_on_batch} --origin-run-id {killed}", profile)
    assert on_batch.returncode != 0  # moto cannot run the jobs
    asked = _gpus_asked(_run_id(on_batch))
    assert asked == {"measure": [True] * len(jobs) * (TASK_RETRIES + 1), "decide": [False]}


def test_run_with_batch_submits_to_the_queue(aws: Aws, profile: dict[str, str]) -> None:
    os.environ["MOTO_SIMPLE_BATCH_FAIL_AFTER"] = "0"  # moto reads it in this process
    try:
        proc = _sh(doc_command("python flows/cycle.py run --with batch"), profile)
    finally:
        del os.environ["MOTO_SIMPLE_BATCH_FAIL_AFTER"]
    assert proc.returncode != 0  # the start job cannot run here
    batch = aws.client("batch")
    jobs = batch.list_jobs(jobQueue=_queue(aws), jobStatus="FAILED")["jobSummaryList"]
    starts = batch.describe_jobs(jobs=[j["jobId"] for j in jobs if "start" in j["jobName"]])
    assert starts["jobs"], [j["jobName"] for j in jobs]
    assert "step start" in " ".join(starts["jobs"][-1]["container"]["command"])
    definition = batch.describe_job_definitions(
        jobDefinitions=[starts["jobs"][-1]["jobDefinition"]]
    )
    assert definition["jobDefinitions"][0]["containerProperties"]["image"] == IMAGE
    assert _gpus_asked(_run_id(proc)) == {"start": [False]}


def _gpus_asked(run_id: str) -> dict[str, list[bool]]:
    """Per step of run `run_id`, whether each Batch job Metaflow submitted for it asked for a GPU.

    Metaflow asks for the GPU in the job's container overrides, which moto's DescribeJobs leaves
    out: read what the server received (it runs in this process).
    """
    from moto.batch.models import batch_backends

    asked: dict[str, list[bool]] = {}
    for job in batch_backends["123456789012"]["us-east-1"]._jobs.values():
        if job.parameters.get("metaflow.run_id") == run_id:
            requirements = job.container_overrides.get("resourceRequirements", [])
            gpu = {"type": "GPU", "value": "1"} in requirements
            asked.setdefault(job.parameters["metaflow.step_name"], []).append(gpu)
    return asked


def _run_id(proc: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"\(run-id (\w+)\)", proc.stdout + proc.stderr)
    assert found is not None, proc.stderr[-3000:]
    return found[1]


def _batch_states(states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Step name: the Batch job parameters of its state, Map iterators included."""
    jobs = {}
    for state in states.values():
        if "Iterator" in state:
            jobs.update(_batch_states(state["Iterator"]["States"]))
        elif state.get("Resource") == "arn:aws:states:::batch:submitJob.sync":
            jobs[state["Parameters"]["Parameters"]["step_name"]] = state["Parameters"]
    return jobs


def _queue(aws: Aws) -> str:
    settings = json.loads((Path(aws.env["METAFLOW_HOME"]) / "config_aws.json").read_text())
    return str(settings["METAFLOW_BATCH_JOB_QUEUE"])


def _sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=600,
    )
