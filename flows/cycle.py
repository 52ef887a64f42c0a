"""CycleFlow: one run is one cycle of the dark factory.

    start ─► train (foreach group) ─► join ─► gate ─► measure (foreach job) ─► decide ─► end

    start    take the search's lease (one cycle at a time), pick up the latest successful
             cycle of the objective on this branch, checked, and check the budget; ask the
             proposers for this cycle's trials (they see validation numbers only)
    train    one Lightning fit per trial; every outcome, crash included, becomes a record;
             under successive halving the group's best continue from their checkpoints
    join     check the run is on its branch and no newer cycle finished meanwhile; score and
             flag every trial, extend the append-only history
    gate     list what the promotion gate needs measured, and fan it out
    measure  with train's resources: re-train the challenger (and the champion) over seeds,
             export the challenger; a task with nothing to do imports no Lightning (while
             there is no champion, train tasks re-measure their group's best where cheaper)
    decide   the champion/challenger gate on those measurements, a new champion's model card
    end      render the cycle card; tag the run `objective:<name>` so the next cycle of its
             branch chains; give the lease back

train and measure retry a task that died (killed, lost node) before @catch records what is
left; a trial's own exception is a record at once and is never retried (docs/architecture.md).

Run it:

    python flows/cycle.py run                               # next cycle of objectives/digits.yaml
    python flows/cycle.py --config objective objectives/wine.yaml run --trials 4 --epochs 5
    python flows/cycle.py run --fresh                       # start a new search
    python flows/cycle.py resume                            # rerun only what did not finish
    python flows/cycle.py run --from-run 1234               # continue from that cycle instead
    python flows/cycle.py --branch quick_try run --trials 4   # a search of its own (test.quick_try)

A search is an objective on a branch of the project (`@project`): your own, `user.<you>`, by
default; `--branch NAME` (test.NAME) for a shared or throw-away one; `--production` (prod) for
the deployed search. A cycle chains only from cycles of its own branch (docs/branches.md).
    python flows/cycle.py card get <run-id>/end card.html   # the cycle card, to open offline

Scale out (docs/scale-out.md): the same flow with `--with batch` on AWS Batch GPUs, or deployed
with a schedule or self-chaining from `--config deployment infra/deploy/<orchestrator>.yaml`:

    python flows/cycle.py run --with batch
    python flows/cycle.py --production --config deployment infra/deploy/step-functions.yaml \
        step-functions create
"""

from __future__ import annotations

import sys
from pathlib import Path

from factory_lib.runs.env import (
    PROJECT,
    datastore_problem,
    ensure_metaflow_user,
    exit_without_collecting,
    local_worker_default,
    use_local_datastore,
)
from factory_lib.runs.preload import hand_over, start_preloader, switch_problem, task_started

# When this task's process began: a train task compares its own start-up with a measure
# task's (measure_in_train).
PROCESS_STARTED = task_started()

if __name__ == "__main__":  # not in a trial worker started with `spawn` (as __mp_main__)
    hand_over(sys.argv, PROCESS_STARTED)  # a task but start's: to the run's preloader, if any
exit_without_collecting()  # every task's process, the card's and the command's
ensure_metaflow_user()
if "step" not in sys.argv:  # not a task: the project's one local datastore, from any folder
    use_local_datastore()
local_worker_default(sys.argv)
if __name__ == "__main__" and (problem := datastore_problem(sys.argv) or switch_problem()):
    sys.exit(problem)  # one line naming the path, not Metaflow's internal-error traceback
if __name__ == "__main__":
    start_preloader(sys.argv)  # imports torch and Lightning for the train tasks meanwhile

from collections.abc import Callable  # noqa: E402
from typing import Any, TypeVar, cast  # noqa: E402

# Metaflow adds its step decorators (card, catch, ...) when imported: mypy cannot see them.
from metaflow import (  # type: ignore[attr-defined]  # noqa: E402
    Config,
    FlowSpec,
    Parameter,
    card,
    catch,
    config_expr,
    current,
    project,
    resources,
    retry,
    step,
    timeout,
)
from metaflow.exception import MetaflowException  # noqa: E402

from factory_lib.runs.deploy import DeploymentError, deployed, parse_deployment  # noqa: E402

DEFAULT_OBJECTIVE = "objectives/digits.yaml"
# A train task runs at most the objective's trials_per_cycle trials (group_trials' `most`) and
# may take their own timeouts plus room for start-up, data and evaluation; the trials stop
# themselves first, so this only fires on a hang outside a trial.
TRAIN_TIMEOUT = "int(objective.budget.trial_timeout_s * objective.budget.trials_per_cycle) + 600"
# A measure task re-trains one trial `promotion.seeds - 1` times, or exports one model.
MEASURE_TIMEOUT = "int(objective.budget.trial_timeout_s * objective.promotion.seeds) + 600"
# A task that died (killed, out of memory, a lost node) is retried at once, this many times.
TASK_RETRIES = 2
F = TypeVar("F", bound=Callable[..., Any])
# Cards render in a subprocess after the task; a busy machine can make that slow.
CARD_TIMEOUT_S = 180


def _objective_source() -> str | None:
    """The objective file named on the command line, so errors can name it and data paths
    resolve against its folder; None where this process was not started from the command line
    (metaflow.Runner parses configs in its caller too, and again in the run it starts)."""
    argv = sys.argv
    for i, arg in enumerate(argv[:-2]):
        if arg == "--config" and argv[i + 1] == "objective":
            return argv[i + 2]
    return DEFAULT_OBJECTIVE if Path(argv[0]).resolve() == Path(__file__).resolve() else None


def parse_objective_config(text: str) -> dict[str, object]:
    """Metaflow Config parser: the objective checked against what trains before anything runs
    (factory_lib.checks); its warnings are printed."""
    from factory_lib.checks import check_objective  # here: a task's process needs neither
    from factory_lib.objective import ObjectiveError

    source = _objective_source()
    try:
        # Where the file is unknown, its data is read (and checked) in the run itself.
        checked = check_objective(text, source or "<objective>", data=source is not None)
    except ObjectiveError as exc:
        raise MetaflowException(str(exc)) from None
    for warning in checked.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return checked.objective.model_dump(mode="json")


def parse_deployment_config(text: str) -> dict[str, object]:
    """Metaflow Config parser: schedule, chaining and secrets of a deployed flow."""
    try:
        return parse_deployment(text)
    except DeploymentError as exc:
        raise MetaflowException(str(exc)) from None


def on_train_resources(timeout_s: str, error_var: str) -> Callable[[F], F]:
    """The decorators of every step that trains or exports: the objective's resources, a
    timeout, retries of a task that died, and a record of what still failed in `error_var`."""

    def apply(f: F) -> F:
        f = resources(
            gpu=config_expr("objective.resources.gpu"),
            cpu=config_expr("objective.resources.cpu"),
            memory=config_expr("objective.resources.memory_mb"),
        )(f)
        f = timeout(seconds=config_expr(timeout_s))(f)
        f = retry(times=TASK_RETRIES, minutes_between_retries=0)(f)
        return catch(var=error_var, print_exception=True)(f)  # type: ignore[no-any-return]

    return apply


def this_branch() -> str:
    """The @project branch this run is on (user.<you>, test.<name>, prod)."""
    return str(current.branch_name)  # type: ignore[attr-defined]  # set by @project


def death_of(task: Any, step: str, plan: Any) -> str | None:
    """How a foreach task that @catch stood in for died (its process's exit, and what the
    kernel says about out-of-memory kills since the cycle started), if recorded."""
    if getattr(task, f"{step}_error", None) is None:
        return None
    from factory_lib.runs.client import task_death
    from factory_lib.runs.env import oom_mark, oom_note

    death = task_death(f"{current.flow_name}/{current.run_id}", step, task.index)
    oom = oom_note(getattr(plan, "oom_mark", None), oom_mark())
    return "; ".join(x for x in (death, oom) if x) or None


@project(name=PROJECT)
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
        is_flag=True,  # type: ignore[arg-type]  # Metaflow annotates **kwargs as a dict
        help="start a new search instead of continuing",
    )
    from_run = Parameter(
        "from-run",
        type=str,
        default="",
        help="continue from this run id of the objective instead of its latest cycle "
        "(docs/reliability.md: a damaged run)",
    )

    @step
    def start(self) -> None:
        """Take the objective's lease, plan from the latest successful cycle, and propose this
        cycle's trials, grouped for the train foreach."""
        from factory_lib.cycle.propose import group_trials, open_cycle
        from factory_lib.objective import Objective

        spec = Objective.model_validate(self.objective.to_dict()).with_overrides(
            cast(int, self.trials), cast(int, self.epochs)
        )
        self.plan, batch = open_cycle(
            spec,
            str(current.flow_name),
            str(current.run_id),
            fresh=cast(bool, self.fresh),
            from_run=cast(str, self.from_run) or None,
            branch=this_branch(),
        )
        self.proposals, self.mix, self.llm_report = batch.proposals, batch.mix, batch.llm_report
        self.trial_groups = group_trials(
            self.proposals,
            spec.budget.group_size,
            most=self.objective.budget.trials_per_cycle,  # what TRAIN_TIMEOUT allows for
        )
        print(
            f"{spec.name} on {self.plan.branch}: cycle {self.plan.cycle}, "
            f"{len(self.plan.history)} earlier trials"
        )
        cost = batch.llm_report.cost_lines() if batch.llm_report else []
        for line in (
            *self.plan.notices,
            *batch.notices,
            *cost,
            *(p.summary() for p in self.proposals),
        ):
            print(line)
        self.next(self.train, foreach="trial_groups")

    @on_train_resources(TRAIN_TIMEOUT, error_var="train_error")
    @step
    def train(self) -> None:
        """Train and evaluate this group's trials; each outcome becomes a TrialResult. Then
        re-measure and export the group's best, in case it is the cycle's challenger, where
        that is cheaper than measure tasks (factory_lib.cycle.measure.measure_in_train)."""
        from factory_lib.cycle.measure import GroupBests, measure_in_train
        from factory_lib.cycle.plan import pruning_curves
        from factory_lib.records import Proposal
        from factory_lib.runs.client import stored_checkpoint
        from factory_lib.train.group import train_group
        from factory_lib.train.tracking import trial_logs

        self.group = cast(tuple[Proposal, ...], self.input)
        outputs = train_group(
            self.plan.objective,
            self.group,
            current.pathspec,
            concurrent_tasks=len(self.trial_groups),
            references=pruning_curves(
                self.plan, self.deployment.to_dict().get("optuna_storage"), str(current.run_id)
            ),
            history=self.plan.history,
            load_checkpoint=stored_checkpoint,
            expected_data=self.plan.data,
        )
        self.trial_results = [o.result for o in outputs]
        self.trial_logs = trial_logs(self.plan.objective, self.trial_results)
        self.trial_weights = {
            o.result.weights_sha: o.weights for o in outputs if o.weights is not None
        }
        self.trial_checkpoints = {
            o.result.proposal.trial_id: o.checkpoint for o in outputs if o.checkpoint is not None
        }
        bests = GroupBests.of(f"{current.flow_name}/{current.run_id}", self.index or 0)
        self.measured = measure_in_train(
            self.plan, outputs, PROCESS_STARTED, len(self.trial_groups), bests
        )
        self.next(self.join)

    @step
    def join(self, inputs: Any) -> None:
        """Score and flag every trial, grade its prediction, extend the append-only history,
        and write the lab notes."""
        from factory_lib.cycle.close import score_cycle
        from factory_lib.cycle.measure import GroupBests
        from factory_lib.cycle.plan import results_from_task
        from factory_lib.runs.lease import check_branch, check_not_superseded

        # Each task pickles what it read again (set order varies by process), so Metaflow's
        # merge_artifacts sees "conflicts" in identical values: take them from the first input.
        first = inputs[0]
        self.plan, self.proposals = first.plan, first.proposals
        self.mix, self.llm_report = first.mix, first.llm_report
        pathspec = f"{current.flow_name}/{current.run_id}"
        check_branch(self.plan.branch, this_branch(), pathspec)
        for notice in check_not_superseded(
            self.plan.objective.name, self.plan.newest_cycle, pathspec, self.plan.branch
        ):
            print(notice)
        results = [
            r
            for inp in inputs
            for r in results_from_task(
                inp.input,
                getattr(inp, "trial_results", None),
                getattr(inp, "train_error", None),
                death_of(inp, "train", self.plan),
            )
        ]
        weights = {
            sha: blob for inp in inputs for sha, blob in getattr(inp, "trial_weights", {}).items()
        }
        self.scored = score_cycle(self.plan, results, weights.__getitem__)
        self.records, self.history = self.scored.records, self.scored.history
        self.notes = self.scored.notes
        self.measured_in_train = [
            m for inp in inputs if (m := getattr(inp, "measured", None)) is not None
        ]
        GroupBests.of(pathspec).clear()  # what the train tasks posted
        self.next(self.gate)

    @step
    def gate(self) -> None:
        """List what the promotion gate must measure and fan it out (a join cannot split)."""
        from factory_lib.cycle.close import measure_jobs

        self.measure_jobs = measure_jobs(self.plan, self.scored, self.measured_in_train)
        print("; ".join(job.describe() for job in self.measure_jobs))
        self.next(self.measure, foreach="measure_jobs")

    @on_train_resources(MEASURE_TIMEOUT, error_var="measure_error")
    @step
    def measure(self) -> None:
        """Re-measure one trial over seeds, or export the challenger."""
        from factory_lib.cycle.close import MeasureJob
        from factory_lib.cycle.measure import run_job

        job = cast(MeasureJob, self.input)
        self.measurement = run_job(self.plan, job, self.scored.candidate, len(self.measure_jobs))
        self.next(self.decide)

    @step
    def decide(self, inputs: Any) -> None:
        """Run the champion/challenger gate on the measurements; record the outcome."""
        from factory_lib.cycle.close import close_cycle

        first = inputs[0]  # what the join set, the same in every input (see join)
        self.plan, self.proposals = first.plan, first.proposals
        self.mix, self.llm_report = first.mix, first.llm_report
        self.scored, self.records, self.history = first.scored, first.records, first.history
        self.notes = first.notes
        self.measured_in_train = first.measured_in_train
        outcome = close_cycle(
            self.plan,
            self.scored,
            [
                *self.measured_in_train,
                *(inp.measurement for inp in inputs if hasattr(inp, "measurement")),
            ],
            self.llm_report.usd if self.llm_report else 0.0,
            run_pathspec=f"{current.flow_name}/{current.run_id}",
        )
        self.cycle, self.decision, self.promotions = (
            outcome.cycle,
            outcome.decision,
            outcome.promotions,
        )
        bundle = outcome.bundle
        self.champion = bundle.champion if bundle else None
        self.champion_package = bundle.package if bundle else None
        self.model_card = bundle.model_card if bundle else None
        self.exports = bundle.exports if bundle else None
        self.pending = outcome.pending
        self.stale_cycles, self.llm_usd_total = outcome.stale_cycles, outcome.llm_usd_total
        self.pareto = outcome.pareto
        print(outcome.summary.line())
        self.next(self.end)

    @card(type="blank", id="cycle", timeout=CARD_TIMEOUT_S)
    @step
    def end(self) -> None:
        """Render the cycle card, then tag the run so the next cycle starts from it."""
        from factory_lib.explore.analysis import CycleView
        from factory_lib.explore.cards import cycle_card, triggers
        from factory_lib.history import state_of
        from factory_lib.runs.lease import check_branch, publish_cycle

        pathspec = f"{current.flow_name}/{current.run_id}"
        check_branch(self.plan.branch, this_branch(), pathspec)
        current.card["cycle"].extend(  # type: ignore[attr-defined]  # added by @card
            cycle_card(CycleView.of(state_of(self, pathspec)), triggers(current.tags))
        )
        plan = self.plan
        for notice in publish_cycle(
            plan.objective.name, plan.newest_cycle, plan.lease, pathspec, plan.branch
        ):
            print(notice)
        print(
            f"{plan.objective.name}: cycle {self.cycle} done; decision {self.decision.status}: "
            f"{self.decision.reason}"
        )


if __name__ == "__main__":
    CycleFlow()
