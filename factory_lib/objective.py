"""The objective: what a search optimises, read from YAML into a strict schema.

A typo in an objective file is an error that names the file and the field before anything
runs. Everything downstream (data, models, proposers, reward, promotion) reads the typed
`Objective`, never the raw YAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

BUNDLED_DATASETS = ("digits", "wine", "breast_cancer", "diabetes", "iris")
IMAGE_DATASETS = ("digits",)
# Each bundled set's input shape and model outputs (classes; 1 for regression), so that an
# objective can be checked against them before any data is loaded (tests check them).
BUNDLED_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10),
    "wine": ((13,), 3),
    "breast_cancer": ((30,), 2),
    "diabetes": ((10,), 1),
    "iris": ((4,), 3),
}
REGRESSION_DATASETS = ("diabetes",)
DataSource = Literal["dataset", "table", "images", "arrays", "module"]
DATA_SOURCES: tuple[DataSource, ...] = ("dataset", "table", "images", "arrays", "module")
# The sources each data option applies to (options not named apply to every source).
_DATA_OPTIONS: dict[str, tuple[str, ...]] = {
    "kwargs": ("module",),
    **{
        k: ("table",)
        for k in (
            "target",
            "features",
            "categorical",
            "id",
            "split_column",
            "group_column",
            "missing_target",
        )
    },
    "image_size": ("images",),
    **{k: ("dataset", "table", "images", "arrays") for k in ("val_fraction", "test_fraction")},
    **{k: ("dataset", "table", "images", "arrays") for k in ("seed", "batch_size")},
}
FAMILIES = ("mlp", "cnn", "arch")
Block = Literal["linear", "conv", "norm", "activation", "dropout", "residual", "pool"]
BLOCKS: tuple[Block, ...] = ("linear", "conv", "norm", "activation", "dropout", "residual", "pool")

CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("rmse", "r2")
COST_METRICS = ("params", "latency_ms", "train_seconds")
# The direction of every metric the evaluator produces: "better" is never just "larger".
METRIC_DIRECTIONS: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",
    "macro_f1": "maximize",
    "rmse": "minimize",
    "r2": "maximize",
    "params": "minimize",
    "latency_ms": "minimize",
    "train_seconds": "minimize",
}
SAMPLERS = ("tpe", "random", "cmaes", "gp")
DEFAULT_LLM_MODEL = "claude-sonnet-4-6"
_CONSTRAINT = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|<|>=|>)\s*([-+0-9.eE]+)\s*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_LEADING_FIELD = re.compile(r"^([a-z_]+)(?::|, )")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


# A count in an objective: an integer as written (YAML's `true` or `1e9` is not one).
Count = Annotated[int, Strict()]
# The longest a trial may take: a week (a step's timeout is a multiple of it).
MAX_TRIAL_TIMEOUT_S = 7 * 24 * 3600


class ObjectiveError(ValueError):
    """An objective file that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an objective: the field (dotted path) and what is wrong with it."""

    field: str
    message: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Param(_Strict):
    when: dict[str, str | int | float | bool] | None = Field(
        default=None,
        description="Sample this parameter only when the named ones have these values.",
    )


class FloatParam(_Param):
    type: Literal["float"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: Count
    high: Count
    log: bool = False
    step: Count = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: tuple[str | int | float | bool, ...] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"choices repeat a value: {list(v)}")
        return v


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class DataSpec(_Strict):
    """Where the data comes from: a bundled scikit-learn set, a table, an image folder, arrays,
    or the user's LightningDataModule by import path (docs/data.md)."""

    dataset: Literal["digits", "wine", "breast_cancer", "diabetes", "iris"] | None = None
    module: str | None = Field(default=None, description="'package.module:DataModuleClass'")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    table: str | None = Field(default=None, description="a .csv or .parquet file, or s3://")
    target: str | None = Field(default=None, description="the table's column to predict")
    features: tuple[str, ...] | None = Field(default=None, description="default: the others")
    categorical: tuple[str, ...] | None = Field(default=None, description="default: inferred")
    id: tuple[str, ...] = Field(default=(), description="columns to drop (row identifiers)")
    split_column: str | None = Field(default=None, description="values train, val, test")
    group_column: str | None = Field(default=None, description="no group spans two splits")
    missing_target: Literal["refuse", "drop"] = "refuse"
    images: str | None = Field(default=None, description="a folder with one subfolder per class")
    image_size: tuple[Count, Count] = Field(default=(32, 32), description="[height, width]")
    arrays: str | None = Field(default=None, description="an .npz file with x and y")
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    seed: Count = 0
    batch_size: Count = Field(default=64, ge=1, le=65_536)

    @property
    def source(self) -> DataSource:
        """Which of the five sources this is."""
        return next(s for s in DATA_SOURCES if getattr(self, s) is not None)

    @property
    def path(self) -> str | None:
        """The file or folder the data is read from (None for bundled sets and modules)."""
        return self.table or self.images or self.arrays

    @property
    def in_memory(self) -> bool:
        """Loaded whole by the factory (everything but a user's data module)."""
        return self.module is None

    def resolved(self, base: Path) -> DataSpec:
        """Paths made absolute against `base` (the objective file's folder); s3:// as is."""
        key = self.source
        path = self.path
        if path is None or "://" in path or Path(path).is_absolute():
            return self
        return self.model_copy(update={key: str((base / path).resolve())})

    def foreign_options(self, names: Sequence[str]) -> str | None:
        """What is wrong with setting options `names` for this source, if anything: options
        of another source, or what a data module decides itself."""
        foreign = sorted(n for n in names if self.source not in _DATA_OPTIONS.get(n, DATA_SOURCES))
        if not foreign:
            return None
        why = " (its loaders decide them)" if self.source == "module" else ""
        return (
            f"{', '.join(foreign)}: {'does' if len(foreign) == 1 else 'do'} not apply to "
            f"'{self.source}' data{why}; see docs/data.md"
        )

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if self.val_fraction + self.test_fraction > 0.8:
            raise ValueError(
                f"val_fraction + test_fraction is {self.val_fraction + self.test_fraction:g}: "
                "keep at least 20% of the data for training"
            )
        given = [s for s in DATA_SOURCES if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one source: 'dataset' (bundled), 'table' (.csv/.parquet), "
                "'images' (a folder), 'arrays' (.npz) or 'module' (import path)"
                + (f"; got {', '.join(given)}" if given else "")
            )
        if self.module is not None and not _IMPORT_PATH.match(self.module):
            raise ValueError(
                f"module must look like 'package.module:ClassName', got {self.module!r}"
            )
        # (A default written out, as a dumped objective has them, does not count here;
        # checks.check_objective refuses those written in the file.)
        fields = type(self).model_fields
        written = [
            f
            for f in self.model_fields_set
            if getattr(self, f) != fields[f].get_default(call_default_factory=True)
        ]
        if problem := self.foreign_options(written):
            raise ValueError(problem)
        if self.table is not None:
            if self.target is None:
                raise ValueError("a table needs 'target': the column to predict")
            if self.split_column and self.group_column:
                raise ValueError("give 'split_column' or 'group_column', not both")
            fractions = sorted(
                f
                for f in ("val_fraction", "test_fraction")
                if getattr(self, f) != fields[f].get_default()
            )
            if self.split_column and fractions:
                raise ValueError(
                    f"{', '.join(fractions)}: the split_column {self.split_column!r} decides "
                    "the splits; drop the fractions or the split_column"
                )
            for name in ("features", "categorical", "id"):
                if self.target in (getattr(self, name) or ()):
                    raise ValueError(f"{name}: lists the target column {self.target!r}")
        if any(s < 1 or s > 4096 for s in self.image_size):
            raise ValueError(f"image_size: each side from 1 to 4096, got {list(self.image_size)}")
        return self


class GrammarSpec(_Strict):
    """What an architecture of family `arch` may be built from (see factory_lib.models.grammar)."""

    blocks: tuple[Block, ...] = BLOCKS
    max_depth: int = Field(default=12, ge=1, le=64)
    max_params: int = Field(default=100_000, ge=1)
    units: tuple[int, int] = (8, 512)
    channels: tuple[int, int] = (4, 64)
    kernels: tuple[int, ...] = (3, 5)
    activations: tuple[Literal["relu", "gelu", "silu", "tanh", "leaky_relu"], ...] = (
        "relu",
        "gelu",
        "silu",
        "tanh",
    )
    max_dropout: float = Field(default=0.5, ge=0, lt=1)

    @model_validator(mode="after")
    def _ranges(self) -> GrammarSpec:
        for name in ("units", "channels"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name}: need 1 <= low <= high, got [{low}, {high}]")
        return self


class ModelSpec(_Strict):
    """The model families the search may use, or a user builder by import path."""

    families: tuple[Literal["mlp", "cnn", "arch"], ...] = ("mlp",)
    grammar: GrammarSpec | None = Field(default=None, description="needed by the 'arch' family")
    builder: str | None = Field(
        default=None, description="'package.module:function(params, input_shape, n_outputs)'"
    )

    @model_validator(mode="after")
    def _builder_path(self) -> ModelSpec:
        if self.builder is not None and not _IMPORT_PATH.match(self.builder):
            raise ValueError(
                f"builder must look like 'package.module:function', got {self.builder!r}"
            )
        if not self.families:
            raise ValueError("families needs at least one of " + ", ".join(FAMILIES))
        if ("arch" in self.families) != (self.grammar is not None):
            raise ValueError("the 'arch' family and a 'grammar' go together: give both or neither")
        return self


class Constraint(_Strict):
    metric: str
    op: Literal["<=", "<", ">=", ">"]
    bound: float

    def holds(self, value: float) -> bool:
        return {
            "<=": value <= self.bound,
            "<": value < self.bound,
            ">=": value >= self.bound,
            ">": value > self.bound,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


class RewardSpec(_Strict):
    """reward = ±metric + Σ weight·(±value), signs from each metric's direction."""

    metric: str
    direction: Literal["maximize", "minimize"] | None = None
    weights: dict[str, float] = Field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    pareto: tuple[str, ...] = Field(
        default=(), description="metrics of the Pareto front (default: the metric and params)"
    )

    @field_validator("constraints", mode="before")
    @classmethod
    def _parse_constraints(cls, v: Any) -> Any:
        if not isinstance(v, list | tuple):
            return v
        parsed = []
        for item in v:
            if isinstance(item, str):
                m = _CONSTRAINT.match(item)
                if m is None:
                    raise ValueError(f"constraint {item!r} is not '<metric> <op> <number>'")
                parsed.append({"metric": m[1], "op": m[2], "bound": float(m[3])})
            else:
                parsed.append(item)
        return parsed

    @property
    def resolved_direction(self) -> Literal["maximize", "minimize"]:
        return self.direction or METRIC_DIRECTIONS[self.metric]


class PruningSpec(_Strict):
    """Stop trials whose validation curve falls behind history's (factory_lib.train.prune)."""

    rule: Literal["none", "percentile"] = "percentile"
    percentile: float = Field(default=50.0, gt=0, lt=100, description="50: the median rule")
    warmup_epochs: int = Field(default=5, ge=1, description="never prune before this epoch")
    min_trials: int = Field(default=4, ge=1, description="earlier curves needed at an epoch")


class FidelitySpec(_Strict):
    """Successive halving over epoch budgets (factory_lib.fidelity): many trials at the first
    rung's epochs, the best 1/eta continued from their checkpoints to the next rung's."""

    rungs: tuple[int, ...] = Field(
        min_length=2, description="epoch budgets, strictly ascending, e.g. [3, 9, 27]"
    )
    eta: int = Field(default=3, ge=2, description="keep the best 1/eta of each rung")

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if v[0] < 1 or any(b <= a for a, b in pairwise(v)):
            raise ValueError("rungs must be positive epoch counts in strictly ascending order")
        return v


class BudgetSpec(_Strict):
    trials_per_cycle: Count = Field(default=8, ge=1, le=512)
    max_epochs: Count = Field(default=30, ge=1, le=10_000)
    early_stopping_patience: Count = Field(default=5, ge=1)
    trial_timeout_s: float = Field(default=600.0, gt=0, le=MAX_TRIAL_TIMEOUT_S, allow_inf_nan=False)
    max_cycles: Count = Field(default=20, ge=1, le=10_000)
    patience: Count = Field(
        default=3, ge=1, description="cycles without improvement before a loop stops"
    )
    group_size: Count | Literal["auto"] = Field(
        default="auto", description="trials per foreach task; auto: one task per CPU core"
    )
    fuse: bool = Field(default=True, description="train same-shape MLP trials as one model")
    isolate: bool = Field(
        default=True,
        description="train in a worker process that is killed when a trial hangs past its "
        "trial_timeout_s; off: in the task's process, the deadline checked between batches",
    )

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("group_size must be at least 1, or 'auto'")
        return v


class PromotionSpec(_Strict):
    metric: str | None = Field(default=None, description="held-out metric; default: the reward's")
    min_improvement: float = Field(default=0.0, ge=0)
    seeds: Count = Field(
        default=3, ge=1, le=20, description="retrainings per side to measure noise"
    )
    confidence: float = Field(default=0.9, gt=0.5, lt=1)
    max_val_test_gap: float = Field(
        default=0.1, gt=0, description="flag a trial whose val and test metric differ by more"
    )
    max_jump_sd: float = Field(
        default=6.0, gt=0, description="flag a val reward this many SDs above history's"
    )
    require_approval: bool = Field(
        default=False, description="a promotion waits for `factory approve` / `factory reject`"
    )


class PriceSpec(_Strict):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float | None = Field(default=None, ge=0, description="default: 1.25 × input")
    cache_read: float | None = Field(default=None, ge=0, description="default: 0.1 × input")


class LLMSpec(_Strict):
    """Claude as a proposer, through the anthropic SDK; the key comes from the environment."""

    model: str = DEFAULT_LLM_MODEL
    share: float = Field(
        default=0.5, ge=0, le=1, description="initial share of each cycle's trials"
    )
    min_share: float = Field(default=0.125, ge=0, le=0.5, description="floor for each proposer")
    learning_rate: float = Field(
        default=0.5, gt=0, le=1, description="how far a cycle moves the share"
    )
    max_tokens: int = Field(default=4096, ge=256)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    max_usd_per_cycle: float = Field(default=0.5, ge=0)
    max_usd_total: float = Field(default=10.0, ge=0)
    price: PriceSpec | None = Field(
        default=None, description="default: factory_lib.propose.llm.report.PRICES"
    )
    show_best: int = Field(default=10, ge=1, description="best trials shown to the model")
    show_failures: int = Field(default=5, ge=0, description="recent failures shown to the model")
    cache_ttl: Literal["auto", "5m", "1h"] = Field(
        default="auto",
        description="prompt cache lifetime; auto: 1h when the search's previous cycle started "
        "more than 5 minutes before this one, else 5m",
    )

    @model_validator(mode="after")
    def _floor(self) -> LLMSpec:
        if not self.min_share <= self.share <= 1 - self.min_share:
            raise ValueError(f"share {self.share} must lie within [min_share, 1 - min_share]")
        return self


class ProposersSpec(_Strict):
    sampler: Literal["tpe", "random", "cmaes", "gp"] = "tpe"
    seed: int = 0
    enqueue: tuple[dict[str, Any], ...] = Field(
        default=(), description="configurations to try first (e.g. a known baseline)"
    )
    llm: LLMSpec | None = Field(default=None, description="omit for Optuna alone")
    multi_objective: bool = Field(
        default=False, description="Optuna optimises reward.pareto's metrics jointly"
    )
    warm_start: str | None = Field(
        default=None,
        description="another objective (same model family, other data) whose history seeds "
        "the Optuna study, marked as such",
    )


class ResourcesSpec(_Strict):
    gpu: Count = Field(default=1, ge=0, le=16)
    cpu: Count = Field(default=1, ge=1, le=512)
    memory_mb: Count = Field(default=4096, ge=256, le=4_000_000)


class TrackingSpec(_Strict):
    """Trial logs for the trackers people already use (docs/tracking.md)."""

    logger: Literal["csv", "tensorboard", "none"] = Field(
        default="csv",
        description="a Lightning logger per trial, its files kept in the train task's "
        "`trial_logs` artifact (`factory logs` writes them out); tensorboard needs the "
        "`tensorboard` extra",
    )


class Objective(_Strict):
    name: str
    task: Literal["classification", "regression"]
    data: DataSpec
    model: ModelSpec = ModelSpec()
    search_space: dict[str, Param]
    fixed: dict[str, str | int | float | bool] = Field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    reward: RewardSpec
    budget: BudgetSpec = BudgetSpec()
    pruning: PruningSpec = PruningSpec()
    fidelity: FidelitySpec | None = Field(
        default=None, description="successive halving across epoch budgets; omit for none"
    )
    promotion: PromotionSpec = PromotionSpec()
    proposers: ProposersSpec = ProposersSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use lower-case letters, digits, '-' and '_' (it becomes a run tag)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Objective:
        if self.data.dataset in REGRESSION_DATASETS and self.task != "regression":
            raise ValueError(f"data.dataset {self.data.dataset!r} is a regression data set")
        if (
            self.data.dataset
            and self.data.dataset not in REGRESSION_DATASETS
            and self.task != "classification"
        ):
            raise ValueError(f"data.dataset {self.data.dataset!r} is a classification data set")
        task_metrics = _task_metrics(self.task)
        for m in self.metrics:
            if m not in task_metrics:
                raise ValueError(
                    f"metrics: {m!r} is not a {self.task} metric ({', '.join(task_metrics)})"
                )
        known = (*self.metric_names, *COST_METRICS)
        for where, name in [
            ("reward.metric", self.reward.metric),
            *((f"reward.weights.{m}", m) for m in self.reward.weights),
            *((f"reward.constraints ({c})", c.metric) for c in self.reward.constraints),
            ("promotion.metric", self.promotion.metric or self.reward.metric),
            *((f"reward.pareto.{m}", m) for m in self.reward.pareto),
        ]:
            if name not in known:
                raise ValueError(f"{where}: unknown metric {name!r}; known: {', '.join(known)}")
        if self.data.images is not None and self.task != "classification":
            raise ValueError(
                "data.images: an image folder (one subfolder per class) is "
                "classification data; set task: classification"
            )
        if "cnn" in self.model.families and (
            self.data.table is not None
            or (self.data.dataset and self.data.dataset not in IMAGE_DATASETS)
        ):
            what = repr(self.data.dataset) if self.data.dataset else "a table"
            raise ValueError(f"model.families: 'cnn' needs image-shaped data; {what} is tabular")
        if self.proposers.warm_start == self.name:
            raise ValueError("proposers.warm_start: names this objective; name another one")
        if self.fidelity and self.fidelity.rungs[-1] > self.budget.max_epochs:
            raise ValueError(
                f"fidelity.rungs: the last rung ({self.fidelity.rungs[-1]} epochs) exceeds "
                f"budget.max_epochs ({self.budget.max_epochs})"
            )
        self._check_space()
        return self

    def _check_space(self) -> None:
        if not self.search_space:
            raise ValueError("search_space: needs at least one parameter")
        seen: list[str] = []
        for name, p in self.search_space.items():
            if name in self.fixed:
                raise ValueError(f"search_space.{name}: also given in 'fixed'")
            for dep, value in (p.when or {}).items():
                if dep not in seen:
                    raise ValueError(
                        f"search_space.{name}.when: {dep!r} must be a parameter listed before it"
                    )
                dep_param = self.search_space[dep]
                if isinstance(dep_param, CategoricalParam) and value not in dep_param.choices:
                    raise ValueError(
                        f"search_space.{name}.when: {value!r} is not a choice of {dep!r}"
                    )
            seen.append(name)
        family = self.search_space.get("family")
        several = len(self.model.families) > 1 and self.model.builder is None
        if several and (
            not isinstance(family, CategoricalParam)
            or set(family.choices) != set(self.model.families)
        ):
            raise ValueError(
                "search_space.family: with several model.families, add "
                "'family: {type: categorical, choices: [...]}' listing exactly those families"
            )

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The quality metrics evaluated on each split (the task's defaults when none are named)."""
        return self.metrics or _task_metrics(self.task)

    @property
    def primary_direction(self) -> Literal["maximize", "minimize"]:
        return self.reward.resolved_direction

    @property
    def pareto_axes(self) -> tuple[str, ...]:
        return self.reward.pareto or (self.reward.metric, "params")

    @property
    def promotion_metric(self) -> str:
        return self.promotion.metric or self.reward.metric

    @property
    def promotion_direction(self) -> Literal["maximize", "minimize"]:
        metric = self.promotion_metric
        return self.primary_direction if metric == self.reward.metric else METRIC_DIRECTIONS[metric]

    def with_overrides(self, trials: int = 0, epochs: int = 0) -> Objective:
        """The same objective with the budget overridden by flow parameters (0 keeps it)."""
        budget = self.budget.model_copy(
            update={
                k: v
                for k, v in (("trials_per_cycle", trials), ("max_epochs", epochs))
                if v and v > 0
            }
        )
        return self.model_copy(update={"budget": budget})


def search_space_changes(before: Objective, after: Objective) -> tuple[str, ...]:
    """What changed in the search (`search_space` and `fixed`) from `before` to `after`, one
    line per parameter added, removed or changed, e.g. "changed search_space.lr from float
    0.001..0.1 log to float 0.0001..0.1 log"; empty when nothing did."""
    changes: list[str] = []
    for section, old, new in (
        (
            "search_space",
            {k: _describe_param(p) for k, p in before.search_space.items()},
            {k: _describe_param(p) for k, p in after.search_space.items()},
        ),
        (
            "fixed",
            {k: repr(v) for k, v in before.fixed.items()},
            {k: repr(v) for k, v in after.fixed.items()},
        ),
    ):
        changes += [f"added {section}.{k} ({new[k]})" for k in new if k not in old]
        changes += [f"removed {section}.{k} (was {old[k]})" for k in old if k not in new]
        changes += [
            f"changed {section}.{k} from {old[k]} to {new[k]}"
            for k in new
            if k in old and old[k] != new[k]
        ]
    return tuple(changes)


def _describe_param(p: FloatParam | IntParam | CategoricalParam) -> str:
    """A parameter's range in one short phrase: "int 4..32 log step 2", "categorical (a, b)"."""
    if isinstance(p, CategoricalParam):
        text = f"categorical ({', '.join(repr(c) for c in p.choices)})"
    else:
        text = f"{p.type} {p.low:g}..{p.high:g}" + (" log" if p.log else "")
        if isinstance(p, IntParam) and p.step != 1:
            text += f" step {p.step}"
    if p.when:
        text += " when " + ", ".join(f"{k}={v!r}" for k, v in p.when.items())
    return text


def _task_metrics(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


class _Loader(yaml.SafeLoader):
    """YAML as people write it: `1e-4` is a float (YAML 1.2), as `1.0e-4` already was."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

FieldPath = tuple[str, ...]


def _walk(
    node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int], problems: list[str]
) -> None:
    """Each field's line (1-based) by its dotted path; a key given twice in one mapping is a
    problem (YAML would silently keep the second)."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            if name in seen:
                where = ".".join((*path, name))
                problems.append(
                    f"  line {line}, {where}: given twice (first on line {seen[name]}); "
                    "YAML would keep only this one"
                )
            seen.setdefault(name, line)
            lines[(*path, name)] = line
            _walk(value, (*path, name), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, str(i)), lines, problems)


def line_of(lines: Mapping[FieldPath, int], field: str) -> int | None:
    """The line of `field` (dotted), or of the nearest enclosing field that is in the file."""
    path = tuple(field.split(".")) if field else ()
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path) if path else None


def refuse(
    source: str, problems: Sequence[Problem], lines: Mapping[FieldPath, int] | None = None
) -> ObjectiveError:
    """One error for all of an objective's problems, each with its line where `lines` (from
    `parse_objective_lines`) has it."""
    out = [f"invalid objective {source}:"]
    for p in problems:
        line = line_of(lines or {}, p.field)
        where = ", ".join(x for x in (f"line {line}" if line else "", p.field) if x)
        out.append(f"  {where}: {p.message}" if where else f"  {p.message}")
    return ObjectiveError("\n".join(out))


def _problems(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"]]
        # Drop the union tag pydantic adds after a search-space parameter ("lr.float.low").
        if (
            len(parts) > 2
            and parts[0] == "search_space"
            and parts[2] in ("float", "int", "categorical")
        ):
            del parts[2]
        parts = [p for p in parts if p not in ("int", "literal['auto']")]  # union tags
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        # A check across a section's fields names the field first ("image_size: ..."): point
        # at that field's line.
        if parts and (named := _LEADING_FIELD.match(msg)):
            parts.append(named.group(1))
            if named.group(0).endswith(":"):
                msg = msg[named.end() :].strip()
        problems.append(Problem(".".join(parts), msg))
    return problems


def parse_objective_lines(text: str, source: str) -> tuple[Objective, dict[FieldPath, int]]:
    """Parse (once) and validate objective YAML, with the line of every field by its path
    (("budget", "max_epochs")); raise ObjectiveError naming `source`, the line and the field."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        raw = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or exc
        raise ObjectiveError(f"invalid objective {source}{where}: not valid YAML: {what}") from exc
    finally:
        loader.dispose()
    if node is None or not isinstance(raw, dict):
        raise ObjectiveError(f"invalid objective {source}: expected a mapping at the top level")
    lines: dict[FieldPath, int] = {}
    duplicates: list[str] = []
    _walk(node, (), lines, duplicates)
    if duplicates:
        raise ObjectiveError("\n".join([f"invalid objective {source}:", *duplicates]))
    try:
        objective = Objective.model_validate(raw)
    except ValidationError as exc:
        raise refuse(source, _problems(exc), lines) from exc
    if Path(source).is_file():  # data paths are relative to the objective file
        data = objective.data.resolved(Path(source).parent)
        objective = objective.model_copy(update={"data": data})
    return objective, lines


def parse_objective(text: str, source: str = "<objective>") -> Objective:
    """Parse and validate objective YAML; raise ObjectiveError naming `source`, the line and
    the field."""
    return parse_objective_lines(text, source)[0]


def read_objective(path: str | Path) -> str:
    """An objective file's text; a missing or unreadable file raises ObjectiveError."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ObjectiveError(f"cannot read objective {path}: {exc.strerror}") from exc


def load_objective(path: str | Path) -> Objective:
    """Read an objective file; a missing file or a bad field raises ObjectiveError."""
    return parse_objective(read_objective(path), str(path))


def objective_path(name_or_path: str, root: Path | None = None) -> Path:
    """`digits` → objectives/digits.yaml; a path is returned as is."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        return Path(name_or_path)
    return (root or Path.cwd()) / "objectives" / f"{name_or_path}.yaml"
