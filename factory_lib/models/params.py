"""What trains: the parameters each model family, the trainer and a user builder read, their
known choices, sane bounds, and the smallest model a search space can build.

No torch: an objective is checked against this before any step runs (factory_lib.checks), and
the builders and the trainer take their choices from here, so the check and what trains
cannot drift apart (tests/test_checks.py holds them to it).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Sequence
from math import prod
from typing import Any

from factory_lib.objective import CategoricalParam, FloatParam, IntParam, Objective, Problem

# Read by the LightningModule of every trial, whatever builds the model.
TRAINER_PARAMS = ("lr", "weight_decay", "optimizer")
# Read by the built-in families' builders (factory_lib.models.builders); `arch` reads the
# `architecture` its proposer writes, never a searched parameter.
FAMILY_PARAMS: dict[str, tuple[str, ...]] = {
    "mlp": ("depth", "width", "activation", "dropout", "norm"),
    "cnn": ("blocks", "channels", "kernel", "activation", "dropout"),
    "arch": (),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "activation": ("relu", "gelu", "tanh", "silu", "leaky_relu"),
    "norm": ("none", "batch", "layer"),
    "optimizer": ("adam", "adamw", "sgd"),
}
# Inclusive bounds past which a value is a typo, not a search (a 1e11-wide layer, lr 100).
BOUNDS: dict[str, tuple[float, float]] = {
    "depth": (0, 64),
    "width": (1, 65_536),
    "blocks": (1, 8),
    "channels": (1, 4_096),
    "kernel": (1, 31),
    "dropout": (0.0, 0.95),
    "lr": (1e-8, 10.0),
    "weight_decay": (0.0, 1.0),
}


def declared_params(builder: Callable[..., Any]) -> tuple[str, ...] | None:
    """The parameters a user builder says it reads (`builder.params = ("hidden", ...)`)."""
    names = getattr(builder, "params", None)
    if names is None:
        return None
    return tuple(str(n) for n in names)


def accepted_params(objective: Objective, builder_params: Sequence[str] | None) -> set[str] | None:
    """Every parameter name a trial of this objective reads; None when a user builder does not
    declare its own (then names cannot be checked)."""
    if objective.model.builder is not None:
        return None if builder_params is None else {*TRAINER_PARAMS, *builder_params}
    families = objective.model.families
    return {*TRAINER_PARAMS, "family", *(p for f in families for p in FAMILY_PARAMS[f])}


def _did_you_mean(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def param_problems(objective: Objective, builder_params: Sequence[str] | None) -> list[Problem]:
    """Searched and fixed parameters that nothing reads, values outside the known choices, and
    numbers outside sane bounds."""
    problems: list[Problem] = []
    accepted = accepted_params(objective, builder_params)
    built_in = objective.model.builder is None  # the families' choices and bounds apply
    reader = (
        "model.families " + ", ".join(objective.model.families) if built_in else "the model.builder"
    )
    choices = {**CHOICES, "family": tuple(objective.model.families)}
    for section, items in (
        ("search_space", objective.search_space.items()),
        ("fixed", objective.fixed.items()),
    ):
        for name, spec in items:
            where = f"{section}.{name}"
            if accepted is not None and name not in accepted:
                problems.append(
                    Problem(
                        where,
                        f"no parameter {name!r} is read by {reader} or the trainer"
                        f"{_did_you_mean(name, accepted)} (read: {', '.join(sorted(accepted))})",
                    )
                )
                continue
            values = spec.choices if isinstance(spec, CategoricalParam) else (spec,)
            if isinstance(spec, CategoricalParam):
                where = f"{where}.choices"
            if name in choices and built_in:
                for value in values:
                    if value not in choices[name]:
                        problems.append(
                            Problem(
                                where,
                                f"{name} {value!r} is not one that trains: one of "
                                f"{', '.join(choices[name])}"
                                f"{_did_you_mean(str(value), choices[name])}",
                            )
                        )
            if name in BOUNDS and built_in:
                problems += _bounds(section, name, spec, values)
            if name == "kernel" and built_in:
                problems += [
                    Problem(where, f"kernel {v!r} must be odd (the convolution keeps its size)")
                    for v in values
                    if isinstance(v, int) and v % 2 == 0
                ]
    return problems


def _bounds(section: str, name: str, spec: Any, values: Sequence[Any]) -> list[Problem]:
    low, high = BOUNDS[name]
    if isinstance(spec, FloatParam | IntParam):
        ends = [(f"{section}.{name}.low", spec.low), (f"{section}.{name}.high", spec.high)]
    else:
        ends = [
            (f"{section}.{name}", v)
            for v in values
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
    return [
        Problem(where, f"{value:g} is outside the sane range of {name}, [{low:g}, {high:g}]")
        for where, value in ends
        if not low <= value <= high
    ]


def mlp_params(n_in: int, depth: int, width: int, n_outputs: int, norm: str = "none") -> int:
    """The parameter count of `build_mlp`'s network (tests check it against torch)."""
    count, fan_in = 0, n_in
    for _ in range(depth):
        count += fan_in * width + width + (2 * width if norm != "none" else 0)
        fan_in = width
    return count + fan_in * n_outputs + n_outputs


def cnn_params(
    input_shape: tuple[int, ...], blocks: int, channels: int, kernel: int, n_outputs: int
) -> int:
    """The parameter count of `build_cnn`'s network (tests check it against torch)."""
    count, c_in = 0, input_shape[0]
    for b in range(blocks):
        out: int = channels << b
        count += c_in * out * kernel * kernel + out + 2 * out
        c_in = out
    side = (input_shape[1] >> blocks) * (input_shape[2] >> blocks)
    return count + c_in * side * n_outputs + n_outputs


def _low(objective: Objective, name: str, default: int) -> int:
    spec = objective.search_space.get(name)
    if isinstance(spec, IntParam):
        return spec.low
    if isinstance(spec, CategoricalParam):
        return min(int(v) for v in spec.choices)
    value = objective.fixed.get(name, default)
    return int(value)


def _largest(size: Callable[[int], int], low: int, high: int, bound: float) -> int:
    """The largest value in [low, high] whose model is within `bound` (size grows with it;
    size(low) is within)."""
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if size(mid) <= bound else (low, mid - 1)
    return low


def size_problems(
    objective: Objective, input_shape: tuple[int, ...], n_outputs: int
) -> list[Problem]:
    """Widths (and channels) whose smallest model already breaks a `params <=` constraint: that
    part of the search space can only produce infeasible trials."""
    bound = min(
        (
            c.bound
            for c in objective.reward.constraints
            if c.metric == "params" and c.op in ("<=", "<")
        ),
        default=None,
    )
    if bound is None or objective.model.builder is not None:
        return []
    problems = []
    n_in, families = prod(input_shape), objective.model.families

    def mlp(width: int) -> int:
        return mlp_params(n_in, _low(objective, "depth", 2), width, n_outputs)

    def cnn(channels: int) -> int:
        blocks, kernel = _low(objective, "blocks", 2), _low(objective, "kernel", 3)
        return cnn_params(input_shape, blocks, channels, kernel, n_outputs)

    sizes: list[tuple[str, str, Callable[[int], int]]] = [("mlp", "width", mlp)]
    if len(input_shape) == 3:
        sizes.append(("cnn", "channels", cnn))
    for family, name, size in sizes:
        spec = objective.search_space.get(name)
        if family not in families or not isinstance(spec, IntParam):
            continue
        if size(spec.low) > bound:
            problems.append(
                Problem(
                    f"search_space.{name}.low",
                    f"even the smallest {family} ({name} {spec.low}) has {size(spec.low):,} "
                    f"parameters, beyond the constraint params <= {bound:g}",
                )
            )
        elif size(spec.high) > bound:
            top = _largest(size, spec.low, spec.high, bound)
            if spec.high > 2 * top:
                problems.append(
                    Problem(
                        f"search_space.{name}.high",
                        f"every {family} with {name} above {top} has more than {bound:g} "
                        f"parameters (the constraint): lower high to at most {top}",
                    )
                )
    return problems
