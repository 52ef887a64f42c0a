"""Architectures as data: a list of blocks in the objective's grammar, checked, then compiled.

A proposal of family `arch` carries `architecture`, a JSON list such as

    [{"type": "conv", "channels": 16, "kernel": 3}, {"type": "activation", "fn": "relu"},
     {"type": "pool"}, {"type": "linear", "units": 64}, {"type": "dropout", "p": 0.2}]

`check` walks the blocks with the data's shape, without torch: unknown blocks or fields,
values outside the grammar, shapes that do not fit (a conv after the features were flattened,
a pool below 1×1), more blocks than `max_depth` and more parameters than `max_params` are
errors that name the block. `compile_blocks` builds the checked list into an `nn.Module`; a
linear head to the outputs is always appended, flattening first where needed.
"""

from __future__ import annotations

import json
from math import prod
from typing import Any

from factory_lib.objective import GrammarSpec

FIELDS = {
    "linear": {"units"},
    "conv": {"channels", "kernel"},
    "norm": set(),
    "activation": {"fn"},
    "dropout": {"p"},
    "residual": set(),
    "pool": set(),
}


def canonical(blocks: list[dict[str, Any]]) -> str:
    """The one string form of an architecture: equal architectures, equal strings."""
    return json.dumps(blocks, sort_keys=True, separators=(",", ":"))


def _int_in(
    block: dict[str, Any], key: str, low: int, high: int, where: str
) -> tuple[int, list[str]]:
    value = block.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return 0, [f"{where}: {key}={value!r} must be an integer in [{low}, {high}]"]
    return value, []


def check(
    raw: Any, grammar: GrammarSpec, input_shape: tuple[int, ...], n_outputs: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """Validate an architecture against the grammar and the data's shape; (blocks, errors)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            return [], [f"architecture is not valid JSON: {exc.msg}"]
    if not isinstance(raw, list) or not raw:
        return [], ["architecture must be a non-empty list of blocks"]
    if len(raw) > grammar.max_depth:
        return [], [f"architecture has {len(raw)} blocks; the grammar allows {grammar.max_depth}"]
    errors: list[str] = []
    shape = tuple(input_shape)
    params = 0
    blocks: list[dict[str, Any]] = []
    for i, block in enumerate(raw):
        where = f"block {i + 1}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in grammar.blocks:
            errors.append(f"{where}: type {kind!r} is not one of {list(grammar.blocks)}")
            continue
        extra = set(block) - {"type"} - FIELDS[kind]
        if extra:
            errors.append(f"{where} ({kind}): unknown fields {sorted(extra)}")
            continue
        image = len(shape) == 3
        if kind == "linear":
            units, errs = _int_in(block, "units", *grammar.units, where)
            errors += errs
            params += prod(shape) * units + units
            shape = (units,)
        elif kind == "conv":
            channels, errs = _int_in(block, "channels", *grammar.channels, where)
            kernel = block.get("kernel")
            if kernel not in grammar.kernels:
                errs.append(f"{where}: kernel={kernel!r} must be one of {list(grammar.kernels)}")
            elif not image:
                errs.append(f"{where}: conv needs image-shaped input (C, H, W), got {shape}")
            elif kernel > min(shape[1:]):
                errs.append(
                    f"{where}: kernel {kernel} is larger than the {shape[1]}x{shape[2]} input"
                )
            errors += errs
            if not errs:
                params += shape[0] * channels * kernel * kernel + channels
                shape = (channels, shape[1], shape[2])
        elif kind == "pool":
            if not image or min(shape[1:]) < 2:
                errors.append(f"{where}: pool needs an image of at least 2x2, got {shape}")
            else:
                shape = (shape[0], shape[1] // 2, shape[2] // 2)
        elif kind == "norm":
            params += 2 * shape[0]
        elif kind == "residual":
            params += 2 * (shape[0] * shape[0] * (9 if image else 1) + shape[0])
        elif kind == "activation" and block.get("fn") not in grammar.activations:
            errors.append(
                f"{where}: fn={block.get('fn')!r} must be one of {list(grammar.activations)}"
            )
        elif kind == "dropout":
            p = block.get("p")
            if (
                isinstance(p, bool)
                or not isinstance(p, int | float)
                or not 0 <= p <= grammar.max_dropout
            ):
                errors.append(f"{where}: p={p!r} must be a number in [0, {grammar.max_dropout}]")
        blocks.append(dict(block))
    params += prod(shape) * n_outputs + n_outputs  # the head
    if not errors and params > grammar.max_params:
        errors.append(
            f"architecture has {params} parameters; the grammar allows {grammar.max_params}"
        )
    return blocks, errors
