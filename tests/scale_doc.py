"""The commands of docs/scale-out.md, so tests run exactly what the guide tells a user to run."""

from __future__ import annotations

import re

from tests.conftest import ROOT

DOC = ROOT / "docs" / "scale-out.md"
SFN = "python flows/cycle.py --production --config deployment infra/deploy/step-functions.yaml"
ARGO = "python flows/cycle.py --production --config deployment infra/deploy/argo.yaml"
# Every ```bash command of the guide starts with one of these; tests/test_scale_out.py runs each.
EXERCISED = (
    "aws cloudformation create-stack",
    "aws cloudformation wait stack-create-complete",
    "aws ecr create-repository",
    "factory profile",
    "factory doctor",
    "aws secretsmanager create-secret",
    "export METAFLOW_PROFILE=aws",
    "python flows/cycle.py run --with batch",
    "python flows/cycle.py resume --with batch",
    f"{SFN} step-functions create\n",
    f"{SFN} step-functions create --only-json",
    f"{ARGO} argo-workflows create --only-json",
)
# ```sh blocks: what needs a Docker engine or a Kubernetes cluster, which CI does not have.
NOT_RUN_HERE = (
    r"^(aws ecr get-login-password \| docker login|docker "
    r"|python flows/cycle.py --production (--config deployment infra/deploy/argo.yaml )?"
    r"argo-workflows "
    r"(create|trigger)$)"
)


def doc_commands(lang: str) -> list[str]:
    """The lines of the guide's ```<lang> blocks, each ending in a newline."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)
    return [f"{line}\n" for block in blocks for line in block.splitlines() if line.strip()]


def doc_command(prefix: str) -> str:
    """The one documented command that starts with `prefix`."""
    found = [c for c in doc_commands("bash") if c.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0].strip()
