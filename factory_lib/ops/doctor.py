"""`factory doctor --profile aws`: is the AWS side of a profile there and usable?

Each check reads the real service through boto3 and says in one line what is wrong, so a user
fixes the profile or the stack before a cycle fails on Batch an hour later.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import boto3
from botocore.exceptions import BotoCoreError, ClientError

REQUIRED = (
    "METAFLOW_DATASTORE_SYSROOT_S3",
    "METAFLOW_BATCH_JOB_QUEUE",
    "METAFLOW_ECS_S3_ACCESS_IAM_ROLE",
    "METAFLOW_BATCH_CONTAINER_IMAGE",
)
# Instance families with NVIDIA GPUs that Batch's ECS GPU AMI serves.
GPU_FAMILY = re.compile(r"^(p\d|g\d)")
ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[\w-]+)\.amazonaws\.com/(?P<repo>[^:@]+)"
    r"(?::(?P<tag>[\w.-]+))?$"
)


@dataclass(frozen=True)
class Finding:
    """One line of the report: a check that passed, a problem, or a note."""

    level: str  # "ok", "problem" or "note"
    message: str

    def line(self) -> str:
        return f"{self.level:<8}{self.message}"


def _ok(message: str) -> Finding:
    return Finding("ok", message)


def _problem(message: str) -> Finding:
    return Finding("problem", message)


def _error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
    return str(exc)


def _role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def check_settings(settings: dict[str, str]) -> Iterator[Finding]:
    missing = [k for k in REQUIRED if not settings.get(k)]
    for key in missing:
        yield _problem(f"{key} is not set in the profile")
    if settings.get("METAFLOW_DEFAULT_DATASTORE") != "s3":
        yield _problem("METAFLOW_DEFAULT_DATASTORE is not s3: remote tasks need the S3 datastore")


def check_bucket(settings: dict[str, str], s3: Any) -> Iterator[Finding]:
    root = settings.get("METAFLOW_DATASTORE_SYSROOT_S3", "")
    found = re.match(r"^s3://([^/]+)/?(.*)$", root)
    if not found:
        if root:
            yield _problem(f"METAFLOW_DATASTORE_SYSROOT_S3 {root!r} is not an s3:// URL")
        return
    bucket, prefix = found[1], found[2].rstrip("/")
    key = f"{prefix}/.factory-doctor-{uuid.uuid4().hex}".lstrip("/")
    try:
        s3.head_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=b"probe")
        s3.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        yield _problem(f"S3 bucket {bucket}: not usable ({_error(exc)})")
        return
    yield _ok(f"S3 datastore {root}: exists, writable")


def _compute_environment(env: dict[str, Any]) -> Iterator[Finding]:
    name = env["computeEnvironmentName"]
    if env.get("state") != "ENABLED" or env.get("status") != "VALID":
        yield _problem(
            f"compute environment {name} is {env.get('state')}/{env.get('status')}: "
            f"{env.get('statusReason', 'no reason given')}"
        )
        return
    types = env.get("computeResources", {}).get("instanceTypes", [])
    gpus = [t for t in types if GPU_FAMILY.match(t)]
    if not gpus:
        yield _problem(f"compute environment {name} has no GPU instance types ({types})")
        return
    yield _ok(f"compute environment {name}: GPU instance types {gpus}")


def check_queue(settings: dict[str, str], batch: Any) -> Iterator[Finding]:
    queue = settings.get("METAFLOW_BATCH_JOB_QUEUE")
    if not queue:
        return
    try:
        queues = batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
    except (ClientError, BotoCoreError) as exc:
        yield _problem(f"Batch job queue {queue}: {_error(exc)}")
        return
    if not queues:
        yield _problem(f"Batch job queue {queue} does not exist")
        return
    q = queues[0]
    if q.get("state") != "ENABLED" or q.get("status") != "VALID":
        yield _problem(f"Batch job queue {queue} is {q.get('state')}/{q.get('status')}")
        return
    yield _ok(f"Batch job queue {q['jobQueueName']}: enabled")
    arns = [c["computeEnvironment"] for c in q.get("computeEnvironmentOrder", [])]
    envs = batch.describe_compute_environments(computeEnvironments=arns)["computeEnvironments"]
    if len(envs) < len(arns):
        yield _problem(f"Batch job queue {queue} names compute environments that do not exist")
    findings = [f for env in envs for f in _compute_environment(env)]
    yield from findings
    if envs and not any(f.level == "ok" for f in findings):
        yield _problem(f"Batch job queue {queue} cannot run GPU jobs")


def _check_role(setting: str, arn: str | None, service: str, iam: Any) -> Iterator[Finding]:
    if not arn:
        return
    try:
        role = iam.get_role(RoleName=_role_name(arn))["Role"]
    except (ClientError, BotoCoreError) as exc:
        yield _problem(f"{setting} {arn}: {_error(exc)}")
        return
    policy = role["AssumeRolePolicyDocument"]
    if isinstance(policy, str):
        policy = json.loads(unquote(policy))
    principals = json.dumps([s.get("Principal", {}) for s in policy.get("Statement", [])])
    if service not in principals:
        yield _problem(f"{setting} {arn}: {service} may not assume it (trust policy)")
        return
    yield _ok(f"{setting}: {role['RoleName']}, assumable by {service}")


def check_roles(settings: dict[str, str], iam: Any) -> Iterator[Finding]:
    roles = (
        ("METAFLOW_ECS_S3_ACCESS_IAM_ROLE", "ecs-tasks.amazonaws.com"),
        ("METAFLOW_SFN_IAM_ROLE", "states.amazonaws.com"),
        ("METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE", "events.amazonaws.com"),
    )
    for setting, service in roles:
        yield from _check_role(setting, settings.get(setting), service, iam)


def check_step_functions(settings: dict[str, str], dynamodb: Any) -> Iterator[Finding]:
    wanted = ("METAFLOW_SFN_IAM_ROLE", "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE")
    missing = [k for k in (*wanted, "METAFLOW_SFN_DYNAMO_DB_TABLE") if not settings.get(k)]
    if missing:
        yield Finding("note", f"Step Functions deployment not configured ({', '.join(missing)})")
    table = settings.get("METAFLOW_SFN_DYNAMO_DB_TABLE")
    if not table:
        return
    try:
        status = dynamodb.describe_table(TableName=table)["Table"]["TableStatus"]
    except (ClientError, BotoCoreError) as exc:
        yield _problem(f"METAFLOW_SFN_DYNAMO_DB_TABLE {table}: {_error(exc)}")
        return
    yield _ok(f"DynamoDB table {table}: {status.lower()}")


def check_image(settings: dict[str, str], ecr: Callable[[str], Any]) -> Iterator[Finding]:
    image = settings.get("METAFLOW_BATCH_CONTAINER_IMAGE")
    if not image:
        return
    found = ECR_IMAGE.match(image)
    if not found:
        yield Finding("note", f"image {image}: not in ECR, not checked")
        return
    try:
        ecr(found["region"]).describe_images(
            registryId=found["account"],
            repositoryName=found["repo"],
            imageIds=[{"imageTag": found["tag"] or "latest"}],
        )
    except (ClientError, BotoCoreError) as exc:
        yield _problem(f"image {image}: {_error(exc)} (build and push it: docs/scale-out.md)")
        return
    yield _ok(f"image {image}: in ECR")


def check_metadata(settings: dict[str, str]) -> Iterator[Finding]:
    if settings.get("METAFLOW_DEFAULT_METADATA") != "service":
        yield _problem(
            "METAFLOW_DEFAULT_METADATA is not service: deployed cycles run on Batch cannot "
            "find the previous cycle without the metadata service (set METAFLOW_SERVICE_URL)"
        )
        return
    url = settings.get("METAFLOW_SERVICE_URL", "").rstrip("/")
    if not url:
        yield _problem("METAFLOW_SERVICE_URL is not set")
        return
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        yield _problem(f"metadata service {url}: not reachable ({exc})")
        return
    yield _ok(f"metadata service {url}: reachable")


def diagnose(settings: dict[str, str], session: Any | None = None) -> list[Finding]:
    """Every check of a profile's settings against AWS; no exception escapes for a problem."""
    session = session or boto3.session.Session()
    s3 = session.client("s3", endpoint_url=settings.get("METAFLOW_S3_ENDPOINT_URL") or None)
    findings = [
        *check_settings(settings),
        *check_bucket(settings, s3),
        *check_queue(settings, session.client("batch")),
        *check_roles(settings, session.client("iam")),
        *check_step_functions(settings, session.client("dynamodb")),
        *check_image(settings, lambda region: session.client("ecr", region_name=region)),
        *check_metadata(settings),
    ]
    return findings
