"""An objective checked against what trains, before any step runs.

`check_objective` is what the flow's Config parser, `factory loop` and `factory check` call:
the schema (`objective.parse_objective_lines`: fields, types, sane budgets, duplicate keys), the
user code it names (a LightningDataModule class for `data.module`, a callable for
`model.builder`, each imported), the parameters that the model families, the trainer or a
builder read, with their choices and bounds (`models.params`), and the widths a `params <=`
constraint allows. Every problem is refused at once, each with its file, line and field;
what is merely doubtful comes back as a warning.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from factory_lib.imports import ImportPathError, resolve
from factory_lib.models.params import declared_params, param_problems, size_problems
from factory_lib.objective import (
    BUNDLED_SHAPES,
    Objective,
    Problem,
    parse_objective_lines,
    read_objective,
    refuse,
)

# Where Linux lists the NVIDIA GPUs its driver sees (read without importing torch).
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class Checked:
    """An objective that passed every check, and what is worth saying about it."""

    objective: Objective
    warnings: tuple[str, ...] = ()


def check_objective(text: str, source: str, data: bool = True) -> Checked:
    """Parse and check objective YAML; raise ObjectiveError listing every problem found. With
    `data`, a table, image folder or array file is read and checked too."""
    objective, lines = parse_objective_lines(text, source)
    problems, builder_params = _user_code(objective)
    written = [path[1] for path in lines if len(path) == 2 and path[0] == "data"]
    if foreign := objective.data.foreign_options(written):
        problems.append(Problem(f"data.{foreign.partition(':')[0].split(',')[0]}", foreign))
    problems += param_problems(objective, builder_params)
    if objective.data.dataset is not None:
        problems += size_problems(objective, *BUNDLED_SHAPES[objective.data.dataset])
    if data and objective.data.path is not None and not problems:
        problems += _data_problems(objective)
    if problems:
        raise refuse(source, problems, lines)
    warnings = []
    if objective.model.builder is not None and builder_params is None:
        warnings.append(
            f"{source}: model.builder {objective.model.builder!r} declares no `params`, so the "
            "names of the parameters it reads are not checked (set `builder.params = (...)`)"
        )
    gpus = local_gpus()
    if ("resources", "gpu") in lines and objective.resources.gpu > gpus:
        warnings.append(
            f"{source}: resources.gpu asks for {objective.resources.gpu} GPU(s) and this machine "
            f"has {gpus}: trials run here train on "
            f"{'the CPU' if gpus == 0 else f'{gpus} GPU(s)'} (a --with batch run gets them)"
        )
    return Checked(objective, tuple(warnings))


def _data_problems(objective: Objective) -> list[Problem]:
    """A table, image folder or array file read and split as a cycle will: bad data is refused
    here, naming the file and the column, before any step runs."""
    from factory_lib.data.sources import DataError
    from factory_lib.data.splits import load_splits

    try:
        summary = load_splits(objective.data, objective.task).summary
    except DataError as exc:
        return [Problem(exc.field or f"data.{objective.data.source}", str(exc))]
    return size_problems(objective, summary.input_shape, summary.n_outputs)


def check_file(path: str | Path) -> Checked:
    """`check_objective` of a file; a missing file raises ObjectiveError too."""
    return check_objective(read_objective(path), str(path))


def local_gpus() -> int:
    """NVIDIA GPUs on this machine, as the driver lists them (0 without a driver)."""
    return len(list(NVIDIA_GPUS.iterdir())) if NVIDIA_GPUS.is_dir() else 0


def _user_code(objective: Objective) -> tuple[list[Problem], tuple[str, ...] | None]:
    """Import the user code the objective names; problems with it, and the parameters the
    builder declares it reads."""
    problems, declared = [], None
    if objective.data.module is not None:
        try:
            module = resolve(objective.data.module, "data.module")
            if not (
                inspect.isclass(module)
                and any(c.__name__ == "LightningDataModule" for c in module.__mro__)
            ):
                problems.append(
                    Problem(
                        "data.module",
                        f"{objective.data.module!r} is {_kind(module)}, not a "
                        "LightningDataModule class",
                    )
                )
        except ImportPathError as exc:
            problems.append(Problem("data.module", str(exc).partition(": ")[2]))
    if objective.model.builder is not None:
        try:
            builder = resolve(objective.model.builder, "model.builder")
            if isinstance(builder, ModuleType) or not callable(builder):
                problems.append(
                    Problem(
                        "model.builder",
                        f"{objective.model.builder!r} is {_kind(builder)}, not a function "
                        "(params, input_shape, n_outputs) -> nn.Module",
                    )
                )
            else:
                declared = declared_params(builder)
        except ImportPathError as exc:
            problems.append(Problem("model.builder", str(exc).partition(": ")[2]))
    return problems, declared


def _kind(value: object) -> str:
    if isinstance(value, ModuleType):
        return "a module"
    if inspect.isclass(value):
        return f"the class {value.__name__}"
    if inspect.isroutine(value):
        return "a function"
    return f"a value of type {type(value).__name__}"
