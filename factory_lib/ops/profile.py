"""Metaflow configuration profiles: where they live, and one made from the CloudFormation stack.

Metaflow reads `$METAFLOW_HOME/config_<name>.json` (METAFLOW_HOME defaults to ~/.metaflowconfig)
when METAFLOW_PROFILE=<name>; environment variables override what the file says.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# CloudFormation output of infra/cloudformation/dark-factory.yaml -> Metaflow setting.
STACK_OUTPUTS = {
    "DatastoreRoot": "METAFLOW_DATASTORE_SYSROOT_S3",
    "JobQueue": "METAFLOW_BATCH_JOB_QUEUE",
    "TaskRole": "METAFLOW_ECS_S3_ACCESS_IAM_ROLE",
    "StepFunctionsRole": "METAFLOW_SFN_IAM_ROLE",
    "EventsRole": "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE",
    "StepFunctionsTable": "METAFLOW_SFN_DYNAMO_DB_TABLE",
}


class ProfileError(RuntimeError):
    """A profile that cannot be read or made."""


def metaflow_home() -> Path:
    return Path(os.environ.get("METAFLOW_HOME") or Path.home() / ".metaflowconfig")


def profile_path(name: str) -> Path:
    return metaflow_home() / f"config_{name}.json"


def read_settings(name: str) -> dict[str, str]:
    """The profile, with METAFLOW_* environment variables on top (as Metaflow reads it)."""
    path = profile_path(name)
    if not path.is_file():
        raise ProfileError(f"no Metaflow profile {name!r}: {path} does not exist")
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise ProfileError(f"{path} must hold one JSON object")
    env = {k: v for k, v in os.environ.items() if k.startswith("METAFLOW_")}
    return {**{k: str(v) for k, v in settings.items()}, **env}


def settings_from_stack(
    outputs: dict[str, str], image: str, metadata_url: str | None
) -> dict[str, str]:
    """Metaflow settings for the AWS profile from the stack's outputs."""
    missing = sorted(set(STACK_OUTPUTS) - set(outputs))
    if missing:
        raise ProfileError(f"the stack has no outputs {missing}: is it dark-factory.yaml?")
    settings = {setting: outputs[key] for key, setting in STACK_OUTPUTS.items()}
    settings.update(
        METAFLOW_DEFAULT_DATASTORE="s3",
        METAFLOW_BATCH_CONTAINER_IMAGE=image,
        METAFLOW_DEFAULT_METADATA="service" if metadata_url else "local",
        # @secrets sources (the Anthropic key) are names in AWS Secrets Manager
        METAFLOW_DEFAULT_SECRETS_BACKEND_TYPE="aws-secrets-manager",
    )
    if metadata_url:
        settings["METAFLOW_SERVICE_URL"] = metadata_url
    return settings


def stack_outputs(stack_name: str, cloudformation: Any) -> dict[str, str]:
    stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def write_profile(name: str, settings: dict[str, str]) -> Path:
    path = profile_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return path
