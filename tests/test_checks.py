"""Objectives checked against what trains: every mistake a new user made, and the ones a fuzz
set of malformed objectives found, refused before any step with file, line and field."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from factory_lib.checks import check_objective
from factory_lib.data.describe import describe_data
from factory_lib.models.builders import ACTIVATIONS, DEFAULTS, build_cnn, build_mlp, count_params
from factory_lib.models.params import CHOICES, FAMILY_PARAMS, cnn_params, mlp_params
from factory_lib.objective import BUNDLED_SHAPES, ObjectiveError, parse_objective
from factory_lib.train.module import OPTIMIZERS, TRAINING_DEFAULTS
from tests.conftest import ROOT

SOURCE = "objectives/bad.yaml"


def _spec(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "objectives" / f"{name}.yaml").read_text())


def _text(spec: dict[str, Any]) -> str:
    return yaml.safe_dump(spec, sort_keys=False)


def edit(base: str, change: Callable[[dict[str, Any]], object]) -> str:
    spec = _spec(base)
    change(spec)
    return _text(spec)


def replace(base: str, old: str, new: str) -> str:
    text = (ROOT / "objectives" / f"{base}.yaml").read_text()
    assert old in text
    return text.replace(old, new, 1)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return change


# (what, objective text, field named, words in the message)
FUZZ: list[tuple[str, str, str, str]] = [
    (
        "misspelt-search-param",
        edit("digits", lambda s: s["search_space"].update(widht=s["search_space"].pop("width"))),
        "search_space.widht",
        "did you mean 'width'",
    ),
    (
        "misspelt-fixed-param",
        edit("smoke", _set("fixed.widht", 8)),
        "fixed.widht",
        "did you mean 'width'",
    ),
    (
        "unknown-optimizer",
        edit("digits", _set("fixed.optimizer", "adamm")),
        "fixed.optimizer",
        "optimizer 'adamm' is not one that trains",
    ),
    (
        "unknown-activation",
        edit("digits", _set("search_space.activation.choices", ["relu", "relu6"])),
        "search_space.activation.choices",
        "'relu6'",
    ),
    (
        "unknown-norm",
        edit("smoke", _set("fixed.norm", "batchnorm")),
        "fixed.norm",
        "one of none, batch, layer",
    ),
    (
        "unknown-optimizer-choice",
        edit(
            "smoke",
            _set("search_space.optimizer", {"type": "categorical", "choices": ["adam", "lion"]}),
        ),
        "search_space.optimizer.choices",
        "'lion'",
    ),
    (
        "even-kernel",
        edit("digits", _set("search_space.kernel.choices", [2, 3])),
        "search_space.kernel.choices",
        "must be odd",
    ),
    (
        "builder-is-a-module",
        edit("smoke", _set("model.builder", "os:path")),
        "model.builder",
        "is a module, not a function",
    ),
    (
        "builder-not-callable",
        edit("smoke", _set("model.builder", "tests.user_code.shapes:NOT_CALLABLE")),
        "model.builder",
        "is a value of type int, not a function",
    ),
    (
        "builder-param-undeclared",
        edit("smoke", _set("model.builder", "tests.user_code.shapes:declared")),
        "search_space.width",
        "read: hidden, lr, optimizer, weight_decay",
    ),
    (
        "data-module-runs-a-command",
        edit(
            "smoke",
            lambda s: s.update(data={"module": "subprocess:run", "kwargs": {"args": ["true"]}}),
        ),
        "data.module",
        "is a function, not a LightningDataModule class",
    ),
    (
        "data-module-not-a-datamodule",
        edit("smoke", lambda s: s.update(data={"module": "tests.user_code.shapes:NotADataModule"})),
        "data.module",
        "the class NotADataModule, not a LightningDataModule",
    ),
    (
        "data-module-raises-on-import",
        edit("smoke", lambda s: s.update(data={"module": "tests.user_code.broken_import:DM"})),
        "data.module",
        "RuntimeError: this data module is broken at import",
    ),
    (
        "data-module-missing",
        edit("smoke", lambda s: s.update(data={"module": "no_such_package.data:DM"})),
        "data.module",
        "ModuleNotFoundError",
    ),
    (
        "timeout-infinite",
        replace("smoke", "trial_timeout_s: 120", "trial_timeout_s: .inf"),
        "budget.trial_timeout_s",
        "finite",
    ),
    (
        "timeout-huge",
        replace("smoke", "trial_timeout_s: 120", "trial_timeout_s: 1e12"),
        "budget.trial_timeout_s",
        "less than or equal to 604800",
    ),
    (
        "int-step-zero",
        edit("smoke", _set("search_space.depth.step", 0)),
        "search_space.depth.step",
        "greater than or equal to 1",
    ),
    (
        "int-step-negative",
        edit("smoke", _set("search_space.depth.step", -1)),
        "search_space.depth.step",
        "greater than or equal to 1",
    ),
    (
        "fractions-leave-no-training-data",
        edit("smoke", lambda s: s["data"].update(val_fraction=0.49, test_fraction=0.49)),
        "data",
        "keep at least 20% of the data for training",
    ),
    (
        "epochs-1e9",
        replace("smoke", "max_epochs: 3", "max_epochs: 1e9"),
        "budget.max_epochs",
        "valid integer",
    ),
    (
        "epochs-huge-int",
        edit("smoke", _set("budget.max_epochs", 10**9)),
        "budget.max_epochs",
        "less than or equal to 10000",
    ),
    (
        "batch-size-huge",
        edit("smoke", _set("data.batch_size", 10**9)),
        "data.batch_size",
        "less than or equal to 65536",
    ),
    (
        "width-up-to-1e11",
        edit("digits", _set("search_space.width.high", 10**11)),
        "search_space.width.high",
        "outside the sane range of width",
    ),
    (
        "depth-1000",
        edit("smoke", _set("search_space.depth.high", 1000)),
        "search_space.depth.high",
        "outside the sane range of depth",
    ),
    (
        "dropout-above-1",
        edit("digits", _set("search_space.dropout.high", 1.5)),
        "search_space.dropout.high",
        "outside the sane range of dropout",
    ),
    (
        "lr-100",
        edit("smoke", _set("search_space.lr.high", 100.0)),
        "search_space.lr.high",
        "outside the sane range of lr",
    ),
    (
        "trials-true",
        replace("smoke", "trials_per_cycle: 3", "trials_per_cycle: true"),
        "budget.trials_per_cycle",
        "valid integer",
    ),
    (
        "budget-twice",
        (ROOT / "objectives" / "smoke.yaml").read_text() + "budget:\n  trial_timeout_s: 600\n",
        "budget",
        "given twice (first on line",
    ),
    (
        "param-twice",
        replace("smoke", "  depth:", "  lr: {type: float, low: 0.1, high: 0.2}\n  depth:"),
        "search_space.lr",
        "given twice",
    ),
    (
        "smallest-model-breaks-constraint",
        edit("smoke", _set("reward.constraints", ["params <= 10"])),
        "search_space.width.low",
        "even the smallest mlp",
    ),
    (
        "widths-far-past-constraint",
        edit("smoke", _set("search_space.width.high", 4096)),
        "search_space.width.high",
        "lower high to at most",
    ),
    (
        "patience-zero",
        edit("smoke", _set("budget.early_stopping_patience", 0)),
        "budget.early_stopping_patience",
        "greater than or equal to 1",
    ),
    ("yaml-syntax", replace("smoke", "max_epochs: 3", "max_epochs: [3"), "", "not valid YAML"),
]


@pytest.mark.parametrize(
    ("text", "field", "words"), [f[1:] for f in FUZZ], ids=[f[0] for f in FUZZ]
)
def test_a_mistake_is_refused_with_file_line_and_field(text: str, field: str, words: str) -> None:
    with pytest.raises(ObjectiveError) as info:
        check_objective(text, SOURCE)
    message = str(info.value)
    assert message.startswith(f"invalid objective {SOURCE}"), message
    assert words in message, message
    assert "<unicode string>" not in message
    found = re.search(rf"line (\d+), {re.escape(field)}:" if field else r"line (\d+)", message)
    assert found, message
    key = next(k for k in reversed(field.split(".")) if not k.isdigit()) if field else ""
    assert key in text.splitlines()[int(found[1]) - 1], (message, text)


def test_the_fuzz_set_holds_the_mistakes_the_issue_lists() -> None:
    assert len(FUZZ) >= 31
    assert len({f[0] for f in FUZZ}) == len(FUZZ)


def test_gpus_asked_for_on_a_machine_without_them_are_a_warning() -> None:
    text = edit("smoke", _set("resources.gpu", 4))
    checked = check_objective(text, SOURCE)
    assert any("resources.gpu asks for 4 GPU(s)" in w for w in checked.warnings)
    # The default (one GPU where there is one) says nothing.
    assert not check_objective(edit("smoke", lambda s: s.pop("resources")), SOURCE).warnings


def test_a_builder_that_declares_its_parameters_is_checked_by_them() -> None:
    spec = _spec("smoke")
    spec["model"] = {"builder": "tests.user_code.shapes:declared"}
    spec["search_space"] = {
        "lr": spec["search_space"]["lr"],
        "hidden": {"type": "int", "low": 4, "high": 32},
    }
    assert check_objective(_text(spec), SOURCE).warnings == ()


def test_shipped_objectives_pass() -> None:
    for path in sorted((ROOT / "objectives").glob("*.yaml")):
        assert check_objective(path.read_text(), str(path)).warnings == ()


def test_the_vocabulary_is_what_trains() -> None:
    """The checks' choices and parameter names are the builders' and the trainer's own."""
    assert set(CHOICES["activation"]) == set(ACTIVATIONS)
    assert set(CHOICES["optimizer"]) == set(OPTIMIZERS)
    # (no default family: a trial without one builds the objective's first, as checks assume)
    assert {p for ps in FAMILY_PARAMS.values() for p in ps} == set(DEFAULTS)
    assert set(TRAINING_DEFAULTS) == {"lr", "weight_decay", "optimizer"}
    for family in ("mlp", "cnn"):
        assert set(FAMILY_PARAMS[family]) <= set(DEFAULTS)


@pytest.mark.parametrize("dataset", sorted(BUNDLED_SHAPES))
def test_bundled_shapes_are_the_data(dataset: str) -> None:
    spec = _spec("smoke")
    spec["data"] = {"dataset": dataset}
    spec["task"] = "regression" if dataset == "diabetes" else "classification"
    spec["reward"] = {"metric": "rmse" if dataset == "diabetes" else "accuracy"}
    summary, _ = describe_data(parse_objective(_text(spec)))
    assert (tuple(summary.input_shape), summary.n_outputs) == BUNDLED_SHAPES[dataset]


@pytest.mark.parametrize(
    ("depth", "width", "norm"), [(0, 8, "none"), (1, 8, "none"), (3, 32, "batch")]
)
def test_mlp_parameter_count_matches_torch(depth: int, width: int, norm: str) -> None:
    model = build_mlp({"depth": depth, "width": width, "norm": norm}, (1, 8, 8), 10)
    assert mlp_params(64, depth, width, 10, norm) == count_params(model)


@pytest.mark.parametrize(("blocks", "channels", "kernel"), [(1, 4, 3), (2, 8, 5), (3, 16, 3)])
def test_cnn_parameter_count_matches_torch(blocks: int, channels: int, kernel: int) -> None:
    params = {"blocks": blocks, "channels": channels, "kernel": kernel}
    model = build_cnn(params, (1, 8, 8), 10)
    assert cnn_params((1, 8, 8), blocks, channels, kernel, 10) == count_params(model)
    assert torch.is_tensor(next(model.parameters()))


SHIPPED = sorted((ROOT / "objectives").glob("*.yaml"))


def test_factory_check_passes_every_shipped_objective(capsys: pytest.CaptureFixture[str]) -> None:
    from factory_lib.ops.cli import main

    assert main(["check", *map(str, SHIPPED)]) == 0
    out = capsys.readouterr().out
    for path in SHIPPED:
        assert f"{path}: ok" in out
    assert out.count("  data ") == len(SHIPPED)
    assert "model cnn: " in out and "rough cost here" in out


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_factory_check_catches_a_planted_typo(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from factory_lib.ops.cli import main

    text = path.read_text()
    planted = re.sub(r"^(\s+)lr:", r"\1lrr:", text, count=1, flags=re.M)
    assert planted != text
    bad = tmp_path / path.name
    bad.write_text(planted)
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    line = planted.splitlines().index(next(x for x in planted.splitlines() if "lrr:" in x)) + 1
    assert f"invalid objective {bad}:" in err
    assert f"line {line}, search_space.lrr: no parameter 'lrr'" in err
    assert "did you mean 'lr'?" in err
