"""The plain script a user would write instead of the factory: one process, an Optuna TPE study
over the objective's MLP/CNN search space, each trial one Lightning fit.

    python benchmarks/baseline.py                                  # objectives/digits.yaml
    python benchmarks/baseline.py --objective benchmarks/long_trials.yaml

It reads the objective YAML with nothing but PyYAML, so what it trains is what the factory's
cycle trains for the same file: the bundled scikit-learn data set with the same split fractions
and seed (stratified, standardised with training-split statistics), the same trials per cycle,
max epochs, early-stopping patience, batch size and optimiser, and the same ranges for every
parameter. What it leaves out is what the factory adds: records, resume, history, the sealed
evaluator, the promotion gate, exports and cards. The `arch` family (networks Claude designs)
is left out too: with no API key the factory's Optuna proposer samples MLPs and CNNs only.

Prints one JSON line: the wall time from the interpreter's start (imports included, as a cycle's
wall includes its own), each trial's training seconds, and the best trial's test accuracy.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the heavy imports: a cycle's wall includes its imports too

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOADERS = {
    "digits": datasets.load_digits,
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
}
FAMILIES = ("mlp", "cnn")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
# The defaults the factory uses where a parameter is neither searched nor fixed.
DEFAULTS: dict[str, Any] = {"depth": 2, "width": 128, "activation": "relu", "dropout": 0.0}
DEFAULTS |= {"blocks": 2, "channels": 16, "kernel": 3, "lr": 1e-3, "weight_decay": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", type=Path, default=ROOT / "objectives" / "digits.yaml")
    parser.add_argument("--trials", type=int, default=0, help="0: the objective's budget")
    parser.add_argument("--epochs", type=int, default=0, help="0: the objective's budget")
    args = parser.parse_args()
    spec = yaml.safe_load(args.objective.read_text())
    budget = spec.get("budget", {})
    # the factory's defaults where the objective leaves them out (factory_lib.objective.Budget)
    trials = args.trials or budget.get("trials_per_cycle", 8)
    epochs = args.epochs or budget.get("max_epochs", 30)
    patience = budget.get("early_stopping_patience", 5)
    splits, image_shape = load(spec["data"])
    families = [f for f in spec["model"]["families"] if f in FAMILIES]
    if image_shape is None:
        families = [f for f in families if f != "cnn"]
    seconds: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        params = sample(trial, spec, families)
        net = build(params, image_shape, splits["train"][0].shape[1], splits["n_classes"])
        model = Classifier(net, params, spec.get("fixed", {}).get("optimizer", "adam"))
        started = time.monotonic()
        trainer = L.Trainer(
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[L.pytorch.callbacks.EarlyStopping("val_acc", mode="max", patience=patience)],
        )
        batch = spec["data"].get("batch_size", 64)
        trainer.fit(model, loader(splits["train"], batch, True), loader(splits["val"], batch))
        seconds.append(time.monotonic() - started)
        trial.set_user_attr("test_acc", accuracy(net, splits["test"]))
        return float(trainer.callback_metrics["val_acc"])

    seed = spec.get("proposers", {}).get("seed", 0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    report = {
        "objective": args.objective.stem,
        "trials": trials,
        "wall_s": round(time.time() - STARTED, 1),
        "train_seconds": [round(s, 2) for s in seconds],
        "best_val_accuracy": round(study.best_value, 4),
        "best_test_accuracy": round(study.best_trial.user_attrs["test_acc"], 4),
    }
    print(json.dumps(report))


def load(data: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, ...] | None]:
    """Stratified train/val/test splits, standardised with the training split's statistics."""
    bunch = LOADERS[data["dataset"]]()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    # the factory's defaults where the objective leaves them out (factory_lib.objective.DataSpec)
    seed, test = data.get("seed", 0), data.get("test_fraction", 0.2)
    val = data.get("val_fraction", 0.15)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val / (1 - test), random_state=seed, stratify=y_rest
    )
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    splits: dict[str, Any] = {
        name: ((xs - mean) / std, ys)
        for name, xs, ys in (
            ("train", x_train, y_train),
            ("val", x_val, y_val),
            ("test", x_test, y_test),
        )
    }
    splits["n_classes"] = int(y.max()) + 1
    image_shape = (1, *bunch.images.shape[1:]) if "images" in bunch else None
    return splits, image_shape


def sample(trial: optuna.Trial, spec: dict[str, Any], families: list[str]) -> dict[str, Any]:
    """The objective's search space, define-by-run: `family` first, then what applies to it."""
    params: dict[str, Any] = {**DEFAULTS, "family": families[0]}
    for name, dist in spec["search_space"].items():
        if name == "family":
            params[name] = trial.suggest_categorical(
                name, [c for c in dist["choices"] if c in families]
            )
            continue
        if any(params.get(k) != v for k, v in dist.get("when", {}).items()):
            continue
        if dist["type"] == "float":
            params[name] = trial.suggest_float(
                name, dist["low"], dist["high"], log=dist.get("log", False)
            )
        elif dist["type"] == "int":
            params[name] = trial.suggest_int(
                name, dist["low"], dist["high"], log=dist.get("log", False)
            )
        else:
            params[name] = trial.suggest_categorical(name, dist["choices"])
    return params | spec.get("fixed", {})


def build(
    params: dict[str, Any], image_shape: tuple[int, ...] | None, n_in: int, n_out: int
) -> nn.Module:
    """The factory's two families, written as a user would."""
    act = ACTIVATIONS[params["activation"]]
    if params["family"] == "cnn" and image_shape is not None:
        layers: list[nn.Module] = [nn.Unflatten(1, image_shape)]
        c_in, side = image_shape[0], image_shape[1]
        for b in range(int(params["blocks"])):
            out = int(params["channels"]) * 2**b
            k = int(params["kernel"])
            layers += [
                nn.Conv2d(c_in, out, k, padding=k // 2),
                nn.BatchNorm2d(out),
                act(),
                nn.MaxPool2d(2),
            ]
            c_in, side = out, side // 2
        layers += [
            nn.Flatten(),
            nn.Dropout(params["dropout"]),
            nn.Linear(c_in * side * side, n_out),
        ]
        return nn.Sequential(*layers)
    layers = []
    for _ in range(int(params["depth"])):
        layers += [nn.Linear(n_in, int(params["width"])), act(), nn.Dropout(params["dropout"])]
        n_in = int(params["width"])
    return nn.Sequential(*layers, nn.Linear(n_in, n_out))


class Classifier(L.LightningModule):
    def __init__(self, net: nn.Module, params: dict[str, Any], optimizer: str) -> None:
        super().__init__()
        self.net, self.params, self.optimizer = net, params, optimizer

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, _: int) -> None:
        x, y = batch
        acc = (self.net(x).argmax(1) == y).float().mean()
        self.log("val_acc", acc, on_epoch=True, batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.optimizer](
            self.net.parameters(), lr=self.params["lr"], weight_decay=self.params["weight_decay"]
        )


def loader(split: tuple[np.ndarray, np.ndarray], batch: int, shuffle: bool = False) -> DataLoader:
    x, y = split
    return DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch, shuffle=shuffle
    )


def accuracy(net: nn.Module, split: tuple[np.ndarray, np.ndarray]) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(torch.from_numpy(split[0])).argmax(1).numpy() == split[1]).mean())


if __name__ == "__main__":
    main()
