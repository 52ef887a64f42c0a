"""How a deployed CycleFlow keeps cycling without a laptop: a schedule, event chaining, secrets.

A deployment file (`--config deployment infra/deploy/<orchestrator>.yaml`) is validated here and
turned into Metaflow's own flow decorators by the `deployed` mutator:

- `schedule`: an EventBridge cron (six fields, UTC) -> `@schedule(cron=...)`; Step Functions
  starts a cycle on it, Argo Workflows makes a CronWorkflow of its first five fields.
- `chain: true`: `@trigger_on_finish(flow="CycleFlow")`: on Argo Workflows each successful
  cycle starts the next. A cycle past `budget.max_cycles` refuses to start, fails, and so
  ends the chain. Step Functions cannot do this (Metaflow refuses it there): use a schedule.
- `secrets`: `@secrets(sources=...)` on the start step only (it proposes), so an API key
  reaches the task that calls the model as an environment variable, never as an artifact.
- `optuna_storage`: an Optuna storage every train task reaches (postgresql://..., redis://...,
  or a journal file path for tasks on one machine): trials are then also pruned against the
  curves of this cycle's trials in other tasks as they train (factory_lib.train.prune.Curves).

Local runs ignore the first three; `optuna_storage` applies wherever the tasks run.
"""

from __future__ import annotations

from typing import Any

import yaml
from metaflow.user_decorators.user_flow_decorator import FlowMutator
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# EventBridge cron: minutes hours day-of-month month day-of-week year.
_CRON_FIELDS = 6
_SECRET_STEPS = ("start",)


class DeploymentError(ValueError):
    """A deployment file that does not validate."""


class Deployment(BaseModel):
    """The deployment file: every field optional; an empty file deploys a manual-only flow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: str | None = Field(default=None, description="EventBridge cron, UTC")
    chain: bool = Field(default=False, description="each successful cycle starts the next")
    secrets: tuple[str, ...] = Field(default=(), description="@secrets sources for propose")
    optuna_storage: str | None = Field(
        default=None, description="shared Optuna storage: prune against other tasks' trials"
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) != _CRON_FIELDS:
            raise ValueError(f"an EventBridge cron has {_CRON_FIELDS} fields, e.g. '0 */6 * * ? *'")
        return v


def parse_deployment(text: str, source: str = "deployment") -> dict[str, Any]:
    """Metaflow Config parser: the deployment file validated, as a plain dict."""
    try:
        data = yaml.safe_load(text) or {}
        spec = Deployment.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise DeploymentError(f"invalid deployment {source}:\n{exc}") from None
    return spec.model_dump(mode="json")


class deployed(FlowMutator):  # lower case, like the Metaflow decorators it adds
    """Turn the flow's `deployment` config into @schedule, @trigger_on_finish and @secrets."""

    def pre_mutate(self, mutable_flow: Any) -> None:
        configs = dict(mutable_flow.configs)
        spec = Deployment.model_validate(configs["deployment"].to_dict())
        if spec.schedule:
            mutable_flow.add_decorator("schedule", deco_kwargs={"cron": spec.schedule})
        if spec.chain:
            flow_name = self._flow_cls.__name__  # type: ignore[union-attr]
            mutable_flow.add_decorator("trigger_on_finish", deco_kwargs={"flow": flow_name})
        if spec.secrets:
            for name, step in mutable_flow.steps:
                if name in _SECRET_STEPS:
                    step.add_decorator("secrets", deco_kwargs={"sources": list(spec.secrets)})
