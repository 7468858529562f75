"""Typed settings of a training run, checked when built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cmrec.errors import ConfigError


class SettingError(ConfigError):
    """A bad setting. ``str()`` names the settings by field; `named` by any other names (the CLI's
    flags), so the library and the command line report one check in their own words."""

    def __init__(self, template: str, **values: object) -> None:
        self.template, self.values = template, values
        super().__init__(self.named({}))

    def named(self, names: Mapping[str, str]) -> str:
        """The message with each setting called by `names` (a setting not in it: by its field)."""
        return self.template.format_map(_Names(names, self.values))


class _Names(dict[str, object]):
    """The values of a message; a placeholder that is no value is a setting, called by `names`."""

    def __init__(self, names: Mapping[str, str], values: Mapping[str, object]) -> None:
        super().__init__(values)
        self.names = names

    def __missing__(self, key: str) -> str:
        return self.names.get(key, key)


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained (the model itself is its registered name plus config overrides).

    Args:
        epochs: most epochs; training stops earlier after `patience` epochs without a better
            validation AUC, and the best validation epoch's weights are kept.
        batch_size: samples per batch, even (each user's target and its negative); per process
            when sharded.
        lr: Adam's learning rate (of the dense part when sharded). The paper's recipe: 1e-3.
        seed: seeds the weights, the sampled negatives and the shuffling. Same seed, same run.
    """

    epochs: int = 5
    patience: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.patience < 1:
            raise SettingError(
                "{epochs} and {patience} must be >= 1, got {e} and {p}", e=self.epochs, p=self.patience
            )
        if self.batch_size < 2 or self.batch_size % 2:
            raise SettingError(
                "{batch_size} must be an even number >= 2 (each user's target and its negative), got {b}",
                b=self.batch_size,
            )
        if not self.lr > 0:  # also NaN
            raise SettingError("{lr} must be a positive number, got {v}", v=self.lr)
