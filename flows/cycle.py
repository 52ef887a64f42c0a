"""CycleFlow: one run is one cycle of the dark factory.

    start ─► propose ─► train (foreach trial group) ─► join ─► end

    start    validate the objective, pick up the latest successful cycle of it, check the budget
    propose  ask the proposers for this cycle's trials (they see validation numbers only)
    train    one Lightning fit per trial; every outcome, crash included, becomes a record;
             under successive halving the group's best continue from their checkpoints
    join     score and flag, extend the append-only history, run the champion/challenger gate
             (re-measured over seeds), export and describe a new champion
    end      render the cycle card; tag the run `objective:<name>` so the next cycle chains

Run it:

    python flows/cycle.py run                               # next cycle of objectives/digits.yaml
    python flows/cycle.py --config objective objectives/wine.yaml run --trials 4 --epochs 5
    python flows/cycle.py run --fresh                       # start a new search
    python flows/cycle.py resume                            # rerun only what did not finish
    python flows/cycle.py card get <run-id>/end card.html   # the cycle card, to open offline

Scale out (docs/scale-out.md): the same flow with `--with batch` on AWS Batch GPUs, or deployed
with a schedule or self-chaining from `--config deployment infra/deploy/<orchestrator>.yaml`:

    python flows/cycle.py run --with batch
    python flows/cycle.py --config deployment infra/deploy/step-functions.yaml step-functions create
"""

from __future__ import annotations

import sys

from factory_lib.history import ensure_metaflow_user, local_worker_default

ensure_metaflow_user()
local_worker_default(sys.argv)

from metaflow import (  # noqa: E402
    Config,
    FlowSpec,
    Parameter,
    Run,
    card,
    catch,
    config_expr,
    current,
    resources,
    step,
    timeout,
)
from metaflow.exception import MetaflowException  # noqa: E402

from factory_lib.deploy import DeploymentError, deployed, parse_deployment  # noqa: E402
from factory_lib.objective import (  # noqa: E402
    Objective,
    ObjectiveError,
    check_user_code,
    parse_objective,
)

DEFAULT_OBJECTIVE = "objectives/digits.yaml"
# A train task may take its trials' own timeouts plus room for start-up, data and evaluation;
# the trials stop themselves first, so this only fires on a hang outside a trial.
TASK_TIMEOUT = "int(objective.budget.trial_timeout_s * objective.budget.trials_per_cycle) + 600"
# Cards render in a subprocess after the task; a busy machine can make that slow.
CARD_TIMEOUT_S = 180


def _objective_source() -> str:
    """The objective file named on the command line, so errors can name it."""
    argv = sys.argv
    for i, arg in enumerate(argv[:-2]):
        if arg == "--config" and argv[i + 1] == "objective":
            return argv[i + 2]
    return DEFAULT_OBJECTIVE


def parse_objective_config(text: str) -> dict[str, object]:
    """Metaflow Config parser: the objective validated before anything runs."""
    source = _objective_source()
    try:
        objective = parse_objective(text, source)
        check_user_code(objective, source)
    except ObjectiveError as exc:
        raise MetaflowException(str(exc)) from None
    return objective.model_dump(mode="json")


def parse_deployment_config(text: str) -> dict[str, object]:
    """Metaflow Config parser: schedule, chaining and secrets of a deployed flow."""
    try:
        return parse_deployment(text)
    except DeploymentError as exc:
        raise MetaflowException(str(exc)) from None


@deployed
class CycleFlow(FlowSpec):
    """One cycle: propose, train in parallel, evaluate, score, promote, remember."""

    objective = Config("objective", default=DEFAULT_OBJECTIVE, parser=parse_objective_config)
    deployment = Config(
        "deployment",
        default_value={},
        parser=parse_deployment_config,
        help="infra/deploy/*.yaml: schedule, chaining and secrets when deployed",
    )
    trials = Parameter(
        "trials", type=int, default=0, help="trials this cycle (0: the objective's budget)"
    )
    epochs = Parameter(
        "epochs", type=int, default=0, help="max epochs per trial (0: the objective's budget)"
    )
    fresh = Parameter(
        "fresh",
        type=bool,
        default=False,
        is_flag=True,
        help="start a new search instead of continuing",
    )

    @step
    def start(self):
        """Plan the cycle from the objective and the latest successful cycle."""
        from factory_lib.cycle import plan_cycle

        spec = Objective.model_validate(self.objective.to_dict()).with_overrides(
            self.trials, self.epochs
        )
        self.plan = plan_cycle(spec, current.flow_name, current.run_id, fresh=self.fresh)
        print(f"{spec.name}: cycle {self.plan.cycle}, {len(self.plan.history)} earlier trials")
        for notice in self.plan.notices:
            print(notice)
        self.next(self.propose)

    @step
    def propose(self):
        """Ask the proposers for this cycle's trials and group them for the foreach."""
        from factory_lib.cycle import group_trials, propose_cycle

        batch = propose_cycle(self.plan)
        self.proposals, self.mix, self.llm_report = batch.proposals, batch.mix, batch.llm_report
        self.trial_groups = group_trials(self.proposals, self.plan.objective.budget.group_size)
        for line in (*batch.notices, *(p.summary() for p in self.proposals)):
            print(line)
        self.next(self.train, foreach="trial_groups")

    @catch(var="train_error", print_exception=True)
    @timeout(seconds=config_expr(TASK_TIMEOUT))
    @resources(
        gpu=config_expr("objective.resources.gpu"),
        cpu=config_expr("objective.resources.cpu"),
        memory=config_expr("objective.resources.memory_mb"),
    )
    @step
    def train(self):
        """Train and evaluate this group's trials; each outcome becomes a TrialResult."""
        from factory_lib.cycle import pruning_curves
        from factory_lib.history import stored_checkpoint
        from factory_lib.train import train_group

        self.group = self.input
        outputs = train_group(
            self.plan.objective,
            self.group,
            current.pathspec,
            concurrent_tasks=len(self.trial_groups),
            references=pruning_curves(
                self.plan, self.deployment.to_dict().get("optuna_storage"), current.run_id
            ),
            history=self.plan.history,
            load_checkpoint=stored_checkpoint,
        )
        self.trial_results = [o.result for o in outputs]
        self.trial_weights = {
            o.result.weights_sha: o.weights for o in outputs if o.weights is not None
        }
        self.trial_checkpoints = {
            o.result.proposal.trial_id: o.checkpoint for o in outputs if o.checkpoint is not None
        }
        self.next(self.join)

    @step
    def join(self, inputs):
        """Score every trial, extend history and decide on promotion."""
        from factory_lib.cycle import close_cycle, results_from_task, seed_measurer

        first = inputs[0]
        self.plan, self.proposals, self.mix, self.llm_report = (
            first.plan,
            first.proposals,
            first.mix,
            first.llm_report,
        )
        results = [
            r
            for inp in inputs
            for r in results_from_task(
                inp.group, getattr(inp, "trial_results", None), getattr(inp, "train_error", None)
            )
        ]
        weights = {
            sha: blob for inp in inputs for sha, blob in getattr(inp, "trial_weights", {}).items()
        }
        llm_usd = self.llm_report.usd if self.llm_report else 0.0
        outcome = close_cycle(
            self.plan,
            results,
            weights.__getitem__,
            llm_usd,
            measure=seed_measurer(self.plan),
            run_pathspec=f"{current.flow_name}/{current.run_id}",
        )
        self.cycle = outcome.cycle
        self.records = outcome.records
        self.history = outcome.history
        self.decision = outcome.decision
        self.champion = outcome.champion
        self.champion_package = outcome.champion_package
        self.stale_cycles = outcome.stale_cycles
        self.llm_usd_total = outcome.llm_usd_total
        self.pareto = outcome.pareto
        self.model_card = outcome.model_card
        self.exports = outcome.exports
        self.promotions = outcome.promotions
        self.pending = outcome.pending
        print(outcome.summary_line())
        self.next(self.end)

    @card(type="blank", id="cycle", timeout=CARD_TIMEOUT_S)
    @step
    def end(self):
        """Render the cycle card, then tag the run so the next cycle starts from it."""
        from factory_lib.analysis import CycleView
        from factory_lib.cards import cycle_card
        from factory_lib.history import objective_tag

        view = CycleView(
            objective=self.plan.objective,
            cycle=self.cycle,
            records=self.records,
            history=self.history,
            decision=self.decision,
            champion=self.champion,
            stale_cycles=self.stale_cycles,
            run_pathspec=f"{current.flow_name}/{current.run_id}",
        )
        current.card["cycle"].extend(cycle_card(view))
        Run(f"{current.flow_name}/{current.run_id}").add_tag(
            objective_tag(self.plan.objective.name)
        )
        print(f"{self.plan.objective.name}: cycle {self.cycle} done; {self.decision.reason}")


if __name__ == "__main__":
    CycleFlow()
