"""A local moto server in server mode standing in for AWS, and the stack of infra/ deployed on it.

Every boto3 client (Metaflow's too) reaches it through AWS_ENDPOINT_URL; Metaflow's S3 datastore
through METAFLOW_S3_ENDPOINT_URL. Nothing here mocks a Python object: the real clients speak HTTP
to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

VENV_BIN = str(Path(os.sys.executable).parent)
STACK = "dark-factory"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class Aws:
    """The moto endpoint and the environment that sends AWS clients to it."""

    endpoint: str
    env: dict[str, str]
    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        """One boto3 client per service, closed with the server (no socket left to the GC)."""
        import boto3

        if service not in self.clients:
            self.clients[service] = boto3.client(
                service, endpoint_url=self.endpoint, **_boto_kwargs()
            )
        return self.clients[service]

    def shell(self, command: str, env: dict[str, str] | None = None) -> str:
        """Run a shell command (a line of docs/scale-out.md) against moto; its stdout."""
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, **self.env, **(env or {})},
            timeout=300,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout


def _boto_kwargs() -> dict[str, str]:
    return {
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture(scope="session")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aws]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # Batch jobs cannot run here (no Docker): moto records them and marks them finished.
    request = urllib.request.Request(
        f"{endpoint}/moto-api/config",
        data=json.dumps({"batch": {"use_docker": False}}).encode(),
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()
    home = tmp_path_factory.mktemp("metaflow-home")
    env = {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "METAFLOW_HOME": str(home),
        "PATH": os.pathsep.join((VENV_BIN, os.environ.get("PATH", ""))),
    }
    stand_in = Aws(endpoint, env)
    try:
        yield stand_in
    finally:
        for client in stand_in.clients.values():
            client.close()
        server.stop()


@pytest.fixture(scope="session")
def network(aws: Aws) -> dict[str, str]:
    """A subnet and security group of moto's default VPC, as a user would pick them."""
    ec2 = aws.client("ec2")
    return {
        "SUBNET": ec2.describe_subnets()["Subnets"][0]["SubnetId"],
        "SECURITY_GROUP": ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"],
    }
