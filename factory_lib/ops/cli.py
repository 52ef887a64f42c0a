"""The `factory` command: drive chained cycles through metaflow.Runner, and look at them.

factory loop --cycles 5                          # 5 more cycles of objectives/digits.yaml
factory loop --cycles 3 --objective wine --trials 4 --epochs 10
factory loop --cycles 2 --config path/to/objective.yaml --fresh [--json]
factory status [--objective digits] [--json]     # the cycles of a search, one row each
factory status --objective digits --production   # another branch's search (also --branch NAME)
factory show c002-t05 [--objective digits] [--json]   # one trial's record, and which search
factory notes [--objective digits] [--json]      # what the search learned: the lab notes
factory logs --objective digits logs/            # every trial's logs (CSV, TensorBoard) to a folder
factory export-optuna --objective digits sqlite:///digits.db   # history as an Optuna study
factory export-mlflow --objective digits mlruns/   # history as MLflow runs (the mlflow extra)
factory profile --stack dark-factory --image IMAGE   # Metaflow profile `aws` from the stack
factory doctor --profile aws                         # is the AWS side there and usable?
factory unlock digits                            # remove the lease a dead cycle left behind
factory check objectives/*.yaml                  # refused mistakes, data, models, rough cost
factory retire 1733000000000002 --objective digits --reason "typo in the search space"
factory unretire 1733000000000002 --objective digits   # while no cycle has run since
factory adopt --objective digits                 # runs from before branches: your branch's
factory promote --objective digits --reason "beats prod"   # your champion into production

Every command that reads a search reads your own branch (user.<you>) unless given `--branch
NAME` or `--production` (docs/branches.md).
factory serve --objective digits --port 8000     # the champion over HTTP (docs/serving.md)
factory drift --objective digits --served        # has the traffic served drifted?
factory loop --cycles 1 --watch                  # a cycle whenever served traffic drifts
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from factory_lib.objective import ObjectiveError, objective_path
from factory_lib.ops.loop import FLOW_FILE, loop
from factory_lib.ops.profile import ProfileError
from factory_lib.runs.branches import BranchError
from factory_lib.runs.client import FLOW_NAME, DamagedRunError, branch_name
from factory_lib.runs.env import exit_without_collecting, prepare_reader, user_name
from factory_lib.runs.lease import DatastoreError
from factory_lib.runs.retire import RetireError


def status(args: argparse.Namespace) -> int:
    """Print the cycles of the objective's latest search, one row each (`--json`: for scripts)."""
    from rich.console import Console

    from factory_lib.explore.analysis import budget_status, cycle_summaries, latest, search_of
    from factory_lib.explore.report import status_table

    cycles = _cycles(args)
    summaries = cycle_summaries(cycles)
    b = budget_status(latest(cycles))
    if args.json:
        report = {
            "objective": args.objective,
            "branch": args.branch,
            "search": search_of(cycles),
            "cycles": [s.model_dump(mode="json") for s in summaries],
            "budget": {**asdict(b), "cycles_left": b.cycles_left},
        }
        if args.notes:
            notes = latest(cycles).notes
            report["notes"] = notes.model_dump(mode="json") if notes else None
        print(json.dumps(report, indent=1))
        return 0
    console = Console()
    console.print(f"branch {args.branch}")
    console.print(status_table(args.objective, summaries))
    console.print(
        f"budget: {b.cycles_used} of {b.max_cycles} cycles, {b.cycles_left} left; "
        f"{b.stale_cycles} of {b.patience} cycles without gain; "
        f"{b.train_seconds_total:.1f} s of training in all"
    )
    if args.notes:
        print("\n".join(_notes_lines(latest(cycles))))
    return 0


def notes_command(args: argparse.Namespace) -> int:
    """Print the lab notes of the objective's latest cycle (`--json`: for scripts, agents)."""
    from factory_lib.explore.analysis import latest, search_of

    cycles = _cycles(args)
    view = latest(cycles)
    if args.json:
        notes = view.notes.model_dump(mode="json") if view.notes else None
        print(json.dumps({"search": search_of(cycles), "notes": notes}, indent=1))
        return 0
    print("\n".join(_notes_lines(view)))
    return 0


def logs_command(args: argparse.Namespace) -> int:
    """Write the trial logs of the objective's latest search (or one cycle) into a folder."""
    from factory_lib.runs.logs import cycle_trial_logs, write_logs

    cycles = _cycles(args)
    chosen = [c for c in cycles if args.cycle in (0, c.cycle)]
    if not chosen:
        raise LookupError(f"the search of {args.objective!r} has no cycle {args.cycle}")
    trials = files = 0
    for view in chosen:
        logs = cycle_trial_logs(view.run_pathspec)
        files += write_logs(logs, Path(args.folder))
        trials += len(logs)
    kind = chosen[-1].objective.tracking.logger
    print(f"wrote {files} files of {trials} trials ({kind} logs) to {args.folder}")
    if kind == "tensorboard":
        print(f"open them with: tensorboard --logdir {args.folder}")
    return 0


def _notes_lines(view: Any) -> list[str]:
    if view.notes is None:
        return [f"cycle {view.cycle} ran before lab notes existed: it has none"]
    return list(view.notes.lines())


def show(args: argparse.Namespace) -> int:
    """Print one trial's record from the objective's latest search, and say which search."""
    from rich.console import Console

    from factory_lib.explore.analysis import find_trial, latest, search_of
    from factory_lib.explore.report import trial_panel

    cycles = _cycles(args)
    where = search_of(cycles)
    record = find_trial(latest(cycles).history, args.trial, where)
    if args.json:
        print(json.dumps({"search": where, "record": record.model_dump(mode="json")}, indent=1))
        return 0
    print(f"looked in {where}")
    Console().print(trial_panel(record))
    return 0


def export(args: argparse.Namespace) -> int:
    """Write the objective's history as an Optuna study; run again, add the trials the study
    does not hold yet (history is append-only, and so is its export)."""
    from factory_lib.explore.analysis import export_optuna, latest

    view = latest(_cycles(args))
    try:
        study, added = export_optuna(
            view.objective, view.history, args.storage, args.study_name, update=True
        )
    except ValueError as exc:  # a study of that name this factory did not write
        print(f"factory: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {added} trials to study {study.study_name!r} in {args.storage} "
        f"({len(study.trials)} in all)"
    )
    return 0


def export_mlflow_command(args: argparse.Namespace) -> int:
    """Write the objective's history as runs of an MLflow tracking store."""
    from factory_lib.explore.analysis import latest
    from factory_lib.explore.trackers import export_mlflow

    view = latest(_cycles(args))
    champion = view.champion.trial_id if view.champion else None
    done = export_mlflow(view.objective, view.history, champion, args.uri, args.experiment)
    print(
        f"wrote {done.added} runs to experiment {args.experiment or view.objective.name!r} "
        f"in {args.uri} ({done.kept} it held already; champion {champion or '-'})"
    )
    return 0


def _cycles(args: argparse.Namespace) -> list[Any]:
    """The cycles of the latest search of `--objective` on `--branch`; LookupError, saying
    where it looked, when there are none."""
    from factory_lib.explore.analysis import load_cycles
    from factory_lib.runs.client import flow_command, nothing_found

    cycles = load_cycles(args.objective, FLOW_NAME, branch=args.branch)
    if not cycles:
        raise LookupError(
            f"{nothing_found(args.objective, args.branch)} Run `{flow_command(args.branch)}` "
            "(or `factory loop`) first."
        )
    return cycles


def doctor(args: argparse.Namespace) -> int:
    """Check a profile's bucket, queue, compute environment, roles and image; 1 on a problem."""
    from factory_lib.ops.doctor import diagnose
    from factory_lib.ops.profile import ProfileError, read_settings

    try:
        settings = read_settings(args.profile)
    except ProfileError as exc:
        print(f"problem {exc}")
        return 1
    findings = diagnose(settings)
    for finding in findings:
        print(finding.line())
    problems = sum(f.level == "problem" for f in findings)
    print(f"{problems} problem(s) in profile {args.profile}" if problems else "all checks passed")
    return 1 if problems else 0


def profile(args: argparse.Namespace) -> int:
    """Write the Metaflow profile for the stack made from infra/cloudformation/dark-factory.yaml."""
    import boto3

    from factory_lib.ops.profile import settings_from_stack, stack_outputs, write_profile

    outputs = stack_outputs(args.stack, boto3.client("cloudformation"))
    settings = settings_from_stack(outputs, args.image, args.metadata_url)
    path = write_profile(args.name, settings)
    print(f"wrote {path}; use it with METAFLOW_PROFILE={args.name}")
    if not args.metadata_url:
        print("without --metadata-url, deployed cycles cannot chain: see docs/scale-out.md")
    return 0


def drift_command(args: argparse.Namespace) -> int:
    """Score the champion on new labelled data; exit 0 either way, the report says."""
    from factory_lib.ops.drift import check_drift, check_served_drift, load_labelled

    data = _cycles(args)[-1].objective.data
    if args.served:
        report = check_served_drift(args.objective, args.sample_dir, FLOW_NAME, args.branch)
    elif args.data:
        labelled = load_labelled(args.data, data.target)
        report = check_drift(args.objective, *labelled, FLOW_NAME, branch=args.branch)
    else:
        print("factory drift: give --data FILE or --served", file=sys.stderr)
        return 2
    print(report.model_dump_json(indent=1) if args.json else "\n".join(report.lines()))
    return 0


def serve_command(args: argparse.Namespace) -> int:
    """Serve the objective's current champion over HTTP until stopped (docs/serving.md)."""
    import logging

    import uvicorn

    from factory_lib.ops.drift import served_sample_folder
    from factory_lib.serve.app import ServeConfig, create_app
    from factory_lib.serve.traffic import SamplingConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    folder = (
        None
        if args.no_sample
        else served_sample_folder(args.objective, args.sample_dir, args.branch)
    )
    config = ServeConfig(
        objective=args.objective,
        branch=args.branch,
        poll_s=args.poll,
        batching=not args.no_batching,
        max_batch_rows=args.max_batch,
        max_wait_ms=args.batch_wait_ms,
        max_body_bytes=args.max_body_bytes,
        threads=args.threads,
        sampling=SamplingConfig(folder, args.sample_rate, args.sample_rows, args.sample_files),
    )
    app = create_app(config)  # LookupError (no champion yet) before the port is taken
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")
    return 0


def versions_command(args: argparse.Namespace) -> int:
    """Print the objective's promotion log."""
    from factory_lib.runs.champions import versions

    _cycles(args)  # a clear error when there is no cycle yet
    for e in versions(args.objective, args.branch):
        trial = f"{e.trial_id}@{e.branch}" if e.branch else e.trial_id
        print(f"{e.at}  {e.kind:<13} {trial:<10} {e.actor:<16} {e.run}  {e.reason}")
    return 0


def registry_command(args: argparse.Namespace) -> int:
    """Record a person's decision (approve, reject, rollback) as a tag on the latest cycle."""
    from factory_lib.registry import EventKind
    from factory_lib.runs.champions import record_decision
    from factory_lib.runs.client import find_version, latest_cycle

    _cycles(args)
    state = latest_cycle(FLOW_NAME, args.objective, branch=args.branch)
    assert state is not None
    kind: EventKind
    if args.command == "rollback":
        trial, kind = args.to, "rollback"
        # LookupError if it never was champion
        find_version(FLOW_NAME, args.objective, trial, args.branch)
    else:
        if state.pending is None:
            print(
                f"factory: {args.objective!r} on {args.branch} has no promotion awaiting approval",
                file=sys.stderr,
            )
            return 1
        trial, kind = (
            state.pending.trial_id,
            "approved" if args.command == "approve" else "rejected",
        )
    actor = user_name()
    record_decision(state, kind, trial, actor, args.reason)
    print(f"{kind} {trial} on {state.run_pathspec} by {actor}")
    return 0


def unlock_command(args: argparse.Namespace) -> int:
    """Remove an objective's lease, so that a new cycle can start; say whose it was."""
    from factory_lib.runs.lease import unlock

    removed = unlock(args.objective, branch=args.branch)
    search = f"{args.objective} on {args.branch}"
    if removed is None:
        print(f"{search}: no lease held")
    elif isinstance(removed, str):
        print(f"{search}: removed an unreadable lease ({removed})")
    else:
        print(f"{search}: removed the lease of {removed.describe()}")
        print(f"(should {removed.run} still be running, it stops if a newer cycle finishes first)")
    return 0


def check_command(args: argparse.Namespace) -> int:
    """Check each objective as a run would, then describe its data, models and cost."""
    from factory_lib.ops.check import check_report

    failed = 0
    for name in args.objectives:
        try:
            print("\n".join(check_report(objective_path(name))), flush=True)
        except ObjectiveError as exc:
            print(f"factory: {exc}", file=sys.stderr, flush=True)
            failed += 1
    if failed:
        print(f"factory check: {failed} of {len(args.objectives)} refused", file=sys.stderr)
    return 2 if failed else 0


def retire_command(args: argparse.Namespace) -> int:
    """Tag a cycle retired (or no longer), so that the search passes over it (or not)."""
    from factory_lib.runs.client import cycle_runs
    from factory_lib.runs.retire import retire_cycle, unretire_cycle

    if args.command == "unretire":
        done = unretire_cycle(FLOW_NAME, args.objective, args.run, args.branch)
        print(f"{done.run} is no longer retired (it was {done.describe()})")
        return 0
    done = retire_cycle(FLOW_NAME, args.objective, args.run, args.reason, user_name(), args.branch)
    live = cycle_runs(FLOW_NAME, args.objective, retired=False, branch=args.branch)
    way_on = f"continues from {live[0].pathspec}" if live else "starts a new search"
    print(f"{done.run} {done.describe()}")
    print(f"the next cycle of {args.objective!r} {way_on}; `factory unretire` undoes this")
    return 0


def adopt_command(args: argparse.Namespace) -> int:
    """Make an objective's runs from before branches the history of a branch."""
    from factory_lib.runs.branches import adopt

    adopted = adopt(FLOW_NAME, args.objective, args.branch, user_name())
    print(
        f"{args.objective}: {len(adopted)} run(s) from before branches adopted into "
        f"{args.branch}; its next cycle continues from {adopted[0]}"
    )
    return 0


def promote_command(args: argparse.Namespace) -> int:
    """Make a branch's champion (or an earlier one) the champion of another branch
    (production by default), the approval recorded."""
    from factory_lib.runs.branches import promote_into

    target = branch_name(args.to)
    event = promote_into(
        FLOW_NAME, args.objective, args.branch, target, args.trial, user_name(), args.reason
    )
    if event is None:
        print(
            f"{args.objective}: that model of {args.branch} is the champion of {target} "
            "already: nothing recorded"
        )
        return 0
    print(
        f"{args.objective}: {event.trial_id} of {event.branch} is now the champion of {target}, "
        f"approved by {event.actor} (recorded on {event.run})"
    )
    return 0


def _objective_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", default="digits", help="objective name (digits)")
    _branch_options(p)


def _branch_options(p: argparse.ArgumentParser, what: str = "the search") -> None:
    p.add_argument(
        "--branch",
        help=f"branch of {what}: NAME as the flow's --branch (test.NAME), or a full name "
        "(user.alice, test.quick_try, prod); default: yours, user.<you>",
    )
    p.add_argument("--production", action="store_true", help=f"{what} on the production branch")


def _sample_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sample-dir",
        help="the traffic sample's folder or s3:// prefix (default: beside the datastore)",
    )


def _json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"{what} as JSON, for scripts")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factory", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("loop", help="run N chained cycles of an objective")
    p.add_argument("--cycles", type=int, required=True, help="the most cycles to run")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--objective", default="digits", help="name under objectives/ (digits)")
    which.add_argument("--config", help="path of an objective file")
    p.add_argument("--trials", type=int, default=0, help="trials per cycle (0: the budget's)")
    p.add_argument("--epochs", type=int, default=0, help="max epochs (0: the budget's)")
    p.add_argument("--fresh", action="store_true", help="start a new search with the first cycle")
    p.add_argument("--max-workers", type=int, default=0, help="parallel train tasks (Metaflow's)")
    _branch_options(p)
    p.add_argument("--flow", type=Path, default=FLOW_FILE, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="show the flows' own output")
    p.add_argument(
        "--drift-data",
        help="labelled data (.npz x/y or .csv): start only if `factory drift` says so",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="wait for served traffic to drift (`factory drift --served`), then run the cycles",
    )
    p.add_argument("--watch-every", type=float, default=300.0, help="seconds between checks (300)")
    p.add_argument(
        "--watch-checks", type=int, default=0, help="stop after this many checks (0: never)"
    )
    _sample_dir_option(p)
    _json_option(p, "one line per finished cycle (its summary)")
    p.set_defaults(func=loop)

    p = sub.add_parser("status", help="a table of the cycles of an objective's search")
    _objective_option(p)
    _json_option(p, "each cycle's summary and the budget")
    p.add_argument("--notes", action="store_true", help="and the latest cycle's lab notes")
    p.set_defaults(func=status)

    p = sub.add_parser("notes", help="what the search learned: the latest cycle's lab notes")
    _objective_option(p)
    _json_option(p, "the notes")
    p.set_defaults(func=notes_command)

    p = sub.add_parser("show", help="one trial's record, in the objective's latest search")
    p.add_argument("trial", help="trial id, e.g. c002-t05 (ids repeat across objectives)")
    _objective_option(p)
    _json_option(p, "the record")
    p.set_defaults(func=show)

    p = sub.add_parser("logs", help="write the trials' logs (tracking.logger) into a folder")
    _objective_option(p)
    p.add_argument("folder", help="where to write them, one folder per trial")
    p.add_argument("--cycle", type=int, default=0, help="only this cycle (0: every cycle)")
    p.set_defaults(func=logs_command)

    p = sub.add_parser("export-optuna", help="write the history as an Optuna study")
    _objective_option(p)
    p.add_argument("storage", help="Optuna storage URL, e.g. sqlite:///digits.db")
    p.add_argument("--study-name", help="name of the study (default: the objective's)")
    p.set_defaults(func=export)
    p = sub.add_parser("export-mlflow", help="write the history as runs of an MLflow store")
    _objective_option(p)
    p.add_argument("uri", help="MLflow tracking URI or a folder (a file store), e.g. mlruns/")
    p.add_argument("--experiment", help="experiment name (default: the objective's)")
    p.set_defaults(func=export_mlflow_command)
    p = sub.add_parser("drift", help="is the champion still good on new labelled data?")
    _objective_option(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help=".npz with arrays x and y, or .csv, target last")
    source.add_argument(
        "--served", action="store_true", help="the traffic `factory serve` sampled (no labels)"
    )
    _sample_dir_option(p)
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=drift_command)
    p = sub.add_parser("serve", help="serve the current champion over HTTP (docs/serving.md)")
    _objective_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (8000)")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between registry reads (30)")
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    p.add_argument("--max-batch", type=int, default=64, help="rows per model call at most (64)")
    p.add_argument(
        "--batch-wait-ms", type=float, default=2.0, help="wait for more rows this long (2)"
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=1_000_000, help="larger bodies get 413 (1000000)"
    )
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    p.add_argument("--sample-rate", type=float, default=0.1, help="share of rows kept (0.1)")
    p.add_argument("--sample-rows", type=int, default=1000, help="rows per sample file (1000)")
    p.add_argument("--sample-files", type=int, default=20, help="sample files kept (20)")
    p.add_argument("--no-sample", action="store_true", help="keep no traffic sample")
    _sample_dir_option(p)
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=serve_command)
    p = sub.add_parser("versions", help="the promotion log of an objective")
    _objective_option(p)
    p.set_defaults(func=versions_command)
    for name, what in (
        ("approve", "approve the promotion awaiting approval"),
        ("reject", "reject it"),
    ):
        p = sub.add_parser(name, help=what)
        _objective_option(p)
        p.add_argument("--reason", default="", help="why, for the log")
        p.set_defaults(func=registry_command)
    p = sub.add_parser("rollback", help="make an earlier champion the champion again")
    _objective_option(p)
    p.add_argument("--to", required=True, help="trial id of an earlier champion")
    p.add_argument("--reason", default="", help="why, for the log")
    p.set_defaults(func=registry_command)
    d = sub.add_parser("doctor", help="check the AWS side of a Metaflow profile")
    d.add_argument("--profile", default="aws", help="Metaflow profile name (config_<name>.json)")
    d.set_defaults(func=doctor)

    m = sub.add_parser("profile", help="write a Metaflow profile from the CloudFormation stack")
    m.add_argument("--stack", default="dark-factory", help="stack of dark-factory.yaml")
    m.add_argument("--image", required=True, help="training image (METAFLOW_BATCH_CONTAINER_IMAGE)")
    m.add_argument("--metadata-url", help="Metaflow metadata service URL (METAFLOW_SERVICE_URL)")
    m.add_argument("--name", default="aws", help="profile name (aws)")
    m.set_defaults(func=profile)

    c = sub.add_parser("check", help="check objectives as a run would; data, models, cost")
    c.add_argument("objectives", nargs="+", help="objective files or names under objectives/")
    c.set_defaults(func=check_command)
    p = sub.add_parser("retire", help="mark a cycle retired: the search passes over it")
    p.add_argument("run", help="run id of the cycle (CycleFlow/<id> also)")
    _objective_option(p)
    p.add_argument("--reason", required=True, help="why, shown wherever the cycle is listed")
    p.set_defaults(func=retire_command)
    p = sub.add_parser("unretire", help="undo `factory retire` while no cycle has run since")
    p.add_argument("run", help="run id of the retired cycle")
    _objective_option(p)
    p.set_defaults(func=retire_command)

    u = sub.add_parser("unlock", help="remove the lease of an objective a dead cycle left")
    u.add_argument("objective", help="objective name")
    _branch_options(u)
    u.set_defaults(func=unlock_command)
    p = sub.add_parser("adopt", help="make the runs from before branches a branch's history")
    _objective_option(p)
    p.set_defaults(func=adopt_command)
    p = sub.add_parser(
        "promote", help="make a branch's champion the production champion (approval recorded)"
    )
    p.add_argument("--objective", default="digits", help="objective name (digits)")
    _branch_options(p, "the search the champion comes from")
    p.add_argument("--trial", help="trial id of an earlier champion (default: the current one)")
    p.add_argument("--to", default="prod", help="branch it becomes champion of (prod)")
    p.add_argument("--reason", required=True, help="why, recorded with your name as approval")
    p.set_defaults(func=promote_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    exit_without_collecting()
    args = _parser().parse_args(argv)
    if getattr(args, "cycles", 1) < 1:
        print("factory: --cycles must be at least 1", file=sys.stderr)
        return 2
    prepare_reader()  # before Metaflow reads its configuration
    if hasattr(args, "branch"):
        try:
            args.branch = branch_name(args.branch, args.production)
        except ValueError as exc:
            print(f"factory: {exc}", file=sys.stderr)
            return 2
    try:
        result: int = args.func(args)
    except (ObjectiveError, ProfileError) as exc:
        print(f"factory: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"factory: {exc.args[0]}", file=sys.stderr)
        return 1
    except (DamagedRunError, DatastoreError, RetireError, BranchError) as exc:
        print(f"factory: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
