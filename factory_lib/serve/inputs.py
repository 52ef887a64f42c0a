"""Request bodies checked before they reach the model: every refusal names what is wrong.

A body is a JSON object with exactly one field: `input` (one row) or `inputs` (a list of
rows). A row is what `ChampionModel.predict` takes for the objective's data: the features as
numbers, flat or in the data's input shape (digits: 64 numbers or 8×8), or, for a table, an
object of column values (a missing value may be null).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_BODY_BYTES = 1_000_000
MAX_ROWS = 1024
FIELDS = ("input", "inputs")


class BadRequest(ValueError):
    """A request the server refuses, with the HTTP status to answer and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Parsed:
    """A checked request: its rows (numbers, or table records) and whether it was one row."""

    rows: Any
    single: bool


def _no_constant(name: str) -> float:
    raise BadRequest(422, f"{name} is not a number the model can take (NaN or infinity)")


def parse_body(body: bytes, max_rows: int = MAX_ROWS) -> Parsed:
    """The rows of a request body; BadRequest (400, 413, 422) naming what is wrong."""
    try:
        payload = json.loads(body, parse_constant=_no_constant)
    except BadRequest:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(400, f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest(422, 'body must be a JSON object: {"input": row} or {"inputs": [rows]}')
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise BadRequest(
            422,
            f"unknown field(s) {', '.join(map(repr, unknown))}: "
            "give 'input' (one row) or 'inputs' (a list of rows)",
        )
    if len(payload) != 1:
        raise BadRequest(422, "give exactly one of 'input' (one row) or 'inputs' (a list of rows)")
    single = "input" in payload
    rows = [payload["input"]] if single else payload["inputs"]
    if not isinstance(rows, list):
        raise BadRequest(422, "'inputs' must be a list of rows")
    if not rows:
        raise BadRequest(422, "'inputs' is empty")
    if len(rows) > max_rows:
        raise BadRequest(413, f"'inputs' has {len(rows)} rows; at most {max_rows} per request")
    return Parsed(rows, single)


def numeric_rows(parsed: Parsed, input_shape: tuple[int, ...]) -> np.ndarray:
    """Rows of numbers as float32 (n, features): flat rows or rows of the input shape."""
    where = "input" if parsed.single else "inputs"
    features = int(np.prod(input_shape))
    try:
        arr = np.asarray(parsed.rows, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest(422, _first_problem(parsed.rows, where, features)) from None
    if arr.dtype != np.float64 or arr.ndim < 2:
        raise BadRequest(422, _first_problem(parsed.rows, where, features))
    if int(np.prod(arr.shape[1:])) != features:  # flat, or any shape of that many numbers
        raise BadRequest(
            422,
            f"{where}: a row must have {features} numbers (flat, or shaped as "
            f"{tuple(input_shape)}); got a row of shape {arr.shape[1:]}",
        )
    finite = np.isfinite(arr)
    if not finite.all():
        at = tuple(int(i) for i in np.argwhere(~finite)[0])
        path = _path(where, at[1:] if parsed.single else at)
        value: Any = parsed.rows
        for i in at:
            value = value[i]
        if value is None:  # numpy reads null as NaN
            raise BadRequest(422, f"{path}: not a number (null)")
        raise BadRequest(422, f"{path} is not a number the model can take (NaN or infinity)")
    rows = arr.reshape(len(arr), features)
    if np.abs(rows).max() > np.finfo(np.float32).max:
        raise BadRequest(422, f"{where}: a value is too large for float32")
    return rows.astype(np.float32)


def table_rows(parsed: Parsed, columns: tuple[str, ...]) -> Any:
    """Table records as a DataFrame with the table's columns; unknown or missing columns named."""
    import pandas as pd

    where = "input" if parsed.single else "inputs"
    for i, row in enumerate(parsed.rows):
        path = where if parsed.single else f"{where}[{i}]"
        if not isinstance(row, dict):
            raise BadRequest(422, f"{path}: a row of this table is an object of column values")
        unknown = sorted(set(row) - set(columns))
        if unknown:
            raise BadRequest(422, f"{path}: unknown column(s) {', '.join(map(repr, unknown))}")
        missing = [c for c in columns if c not in row]
        if missing:
            raise BadRequest(
                422,
                f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                "(give null for a missing value)",
            )
        for column, value in row.items():
            if isinstance(value, (dict, list)):
                raise BadRequest(422, f"{path}.{column}: a value, not {type(value).__name__}")
    return pd.DataFrame(parsed.rows, columns=list(columns))


def _path(where: str, index: tuple[int, ...]) -> str:
    return where + "".join(f"[{i}]" for i in index)


def _first_problem(rows: Any, where: str, features: int) -> str:
    """Why rows of numbers do not make an array: the first value that is not a number, or the
    first row whose length differs."""
    single = where == "input"
    first_len: int | None = None
    for i, row in enumerate(rows):
        path = where if single else f"{where}[{i}]"
        if not isinstance(row, list):
            return f"{path}: a row is a list of {features} numbers, not {_kind(row)}"
        flat = list(_leaves(row, path))
        for leaf_path, value in flat:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{leaf_path}: not a number ({_kind(value)})"
        if first_len is None:
            first_len = len(flat)
        elif len(flat) != first_len:
            return f"{path}: {len(flat)} numbers where the first row has {first_len}"
    return f"{where}: rows must be lists of {features} numbers of one shape"


def _leaves(row: Any, path: str) -> Any:
    if isinstance(row, list):
        for j, item in enumerate(row):
            yield from _leaves(item, f"{path}[{j}]")
    else:
        yield path, row


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
