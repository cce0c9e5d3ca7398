"""The model card: what a daemon must know to run an exported policy, stored beside and inside the ONNX file.

A card lives as ``<name>.json`` next to ``<name>.onnx`` and is embedded in the ONNX file's
``metadata_props`` under ``model_card``. Embedding changes the file, so the sha256 is defined as the hash of
the final ONNX file (card already embedded) and the embedded copy carries ``"sha256": null``; the JSON file
beside it carries the hash. JSON layout (schema version 2)::

    {
      "schema_version": 2, "name": "best_model", "created_at": "2025-01-01T00:00:00+00:00",
      "feature_spec": {...},                      # bot.model.features.FeatureSpec.to_dict()
      "observation": {"shape": [242], "dtype": "float32",
                      "normalization": {"in_graph": true, "mean": [...], "std": [...], "std_floor": 1e-8}},
      "action": {"space": "discrete", "mapping": [-1.0, 0.0, 1.0]},   # index -> target position
             or {"space": "continuous", "mapping": {"low": -1.0, "high": 1.0}},
      "onnx": {"input_name": "observation", "output_names": ["action", "logits"], "action_output": "action",
               "opset": 17, "sha256": "<64 hex>"},
      "training": {"run_id": ..., "run_url": ..., "config": {...}, "data_range": {"start": ..., "end": ...},
                   "code_version": ...},
      "metrics": {...},                           # JSON-safe evaluation figures: test (each strategy, after
                                                  # costs), validation_best, costs, purge; walk_forward (every
                                                  # fold's test figures) and sweep (PBO, DSR) when they apply
      "feature_distribution": {...} or null       # bot.model.drift.FeatureDistribution.to_dict(), training split only
    }

Version 1 is the same layout without ``feature_distribution``; such cards still load (with no distribution,
so the daemon runs without drift monitoring and says so once).

With ``normalization.in_graph`` true the graph computes ``(obs - mean) / max(std, std_floor)`` itself, so
the daemon feeds raw observations. Every problem raises `ModelCardError` naming the file and the key.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bot.model.drift import DistributionError, FeatureDistribution

if TYPE_CHECKING:
    from bot.model.features import FeatureSpec

SCHEMA_VERSION = 2
"""Version of the card's JSON layout that this build writes."""
READABLE_VERSIONS = (1, 2)
"""Layouts this build reads; a card with another version is refused."""
METADATA_KEY = "model_card"
"""Key of the card JSON in the ONNX file's metadata_props."""

ActionSpace = Literal["discrete", "continuous"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DTYPES = ("float32", "float64")
_TOP_KEYS = (
    "schema_version",
    "name",
    "created_at",
    "feature_spec",
    "observation",
    "action",
    "onnx",
    "training",
    "metrics",
)
_V2_KEYS = ("feature_distribution",)


class ModelCardError(ValueError):
    """A model card is missing, malformed, inconsistent, or does not match its ONNX file."""


class _InvalidCard(ModelCardError):
    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.detail = detail


@dataclass(frozen=True)
class ActionRange:
    """Bounds of a continuous action, which is itself the target position."""

    low: float
    """Smallest target position the policy may ask for (>= -1)."""
    high: float
    """Largest target position the policy may ask for (<= 1)."""


_START_FIGURES = ("total_return", "sharpe", "max_drawdown", "trade_count")
"""The evaluation figures of each strategy the daemon prints at start (`ModelCard.out_of_sample`)."""
_SWEEP_FIGURES = ("name", "trial", "best", "n_trials", "pbo", "dsr", "dsr_threshold", "survives_dsr")
"""What the daemon prints at start of the sweep a model came from (`metrics.sweep`, see training.sweep)."""


@dataclass(frozen=True)
class ModelCard:
    """Everything the daemon needs to run an exported policy, and where it came from."""

    name: str
    """Model name: the ONNX and card files are `<name>.onnx` and `<name>.json`."""
    feature_spec: Mapping[str, Any]
    """The feature pipeline's spec, as produced by `bot.model.features.FeatureSpec.to_dict()`."""
    observation_shape: tuple[int, ...]
    """Shape of one observation, without the batch axis."""
    action_space: ActionSpace
    """"discrete" (the graph outputs an action index) or "continuous" (it outputs the target position)."""
    action_mapping: tuple[float, ...] | ActionRange
    """Discrete: target position in [-1, 1] for each action index. Continuous: the action's bounds."""
    norm_mean: tuple[float, ...]
    """Observation mean subtracted inside the graph (one per observation element)."""
    norm_std: tuple[float, ...]
    """Observation std divided by inside the graph, before the floor is applied."""
    norm_std_floor: float
    """Smallest divisor the graph uses: max(std, floor)."""
    data_range: Mapping[str, str]
    """Training data: at least `start` and `end` (ISO-8601), usually also `symbol` and `timeframe`."""
    onnx_input_name: str = "observation"
    """Name of the graph's observation input, of shape (batch, *observation_shape)."""
    onnx_output_names: tuple[str, ...] = ("action", "logits")
    """Names of the graph's outputs."""
    onnx_action_output: str = "action"
    """The output holding the action: int64 index (discrete) or clipped target position (continuous)."""
    onnx_opset: int = 17
    """ONNX opset the graph was exported with."""
    onnx_sha256: str | None = None
    """sha256 of the final ONNX file; None only in the copy embedded in that file."""
    observation_dtype: str = "float32"
    """Element type of the observation input."""
    run_id: str | None = None
    """Training run id (W&B or local)."""
    run_url: str | None = None
    """Training run URL, when tracked online."""
    training_config: Mapping[str, Any] = field(default_factory=dict)
    """The full training config, JSON-safe."""
    code_version: str = "unknown"
    """Code version that trained the model (git sha or package version)."""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    """Evaluation figures (JSON-safe), e.g. {"test": {"policy": {...}, "buy_and_hold": {...}}}."""
    created_at: str = ""
    """When the card was written, ISO-8601 UTC."""
    feature_distribution: FeatureDistribution | None = None
    """Training-split distribution of each raw feature (for drift monitoring); None on older cards."""
    schema_version: int = SCHEMA_VERSION
    """Card layout version."""

    def __post_init__(self) -> None:
        _check_card(self)

    @property
    def observation_size(self) -> int:
        """Return the number of elements in one observation."""
        return math.prod(self.observation_shape)

    def target_of(self, action: int | float) -> float:
        """Map an action (index or continuous value) to a target position in [-1, 1]."""
        if isinstance(self.action_mapping, ActionRange):
            return min(max(float(action), self.action_mapping.low), self.action_mapping.high)
        return self.action_mapping[int(action)]

    def out_of_sample(self) -> dict[str, Any]:
        """What the card says of the model out of sample, for the daemon's start line: each strategy's test-split
        figures after costs (total return, Sharpe, max drawdown, trades), each walk-forward fold's the same way,
        the PBO and DSR of the sweep the model came from, the data's end and the purge.

        Empty for a card without evaluation figures. Values are the card's own (JSON numbers, null for NaN).
        """
        out: dict[str, Any] = {}
        test = self.metrics.get("test")
        if isinstance(test, Mapping):
            out["test"] = _start_figures(test)
        walk_forward = self.metrics.get("walk_forward")
        if isinstance(walk_forward, Mapping) and isinstance(walk_forward.get("folds"), Mapping):
            out["walk_forward"] = {
                str(fold): _start_figures(reports)
                for fold, reports in walk_forward["folds"].items()
                if isinstance(reports, Mapping)
            }
        sweep = self.metrics.get("sweep")
        if isinstance(sweep, Mapping):
            out["sweep"] = {key: sweep.get(key) for key in _SWEEP_FIGURES if key in sweep}
        if "purge" in self.metrics:
            out["purge"] = self.metrics["purge"]
        end = self.data_range.get("end")
        if out and end is not None:
            out["data_end"] = end
        return out

    def doubts(self) -> list[str]:
        """What the card's own figures say against trusting the model, one sentence each (empty: nothing).

        The policy lost to buy-and-hold on the test split after costs; a walk-forward fold it lost in; the sweep
        it came from gives it a deflated Sharpe ratio below the threshold. The daemon logs them once at start.
        """
        found: list[str] = []

        def lost(reports: object) -> tuple[float, float] | None:
            if not isinstance(reports, Mapping):
                return None
            policy, hold = reports.get("policy"), reports.get("buy_and_hold")
            if not isinstance(policy, Mapping) or not isinstance(hold, Mapping):
                return None
            ours, theirs = policy.get("total_return"), hold.get("total_return")
            if isinstance(ours, int | float) and isinstance(theirs, int | float) and ours < theirs:
                return float(ours), float(theirs)
            return None

        if (pair := lost(self.metrics.get("test"))) is not None:
            found.append(f"on its test split the policy returned {pair[0]:.2%} after costs, buy-and-hold {pair[1]:.2%}")
        walk_forward = self.metrics.get("walk_forward")
        folds = walk_forward.get("folds") if isinstance(walk_forward, Mapping) else None
        if isinstance(folds, Mapping):
            losing = [str(fold) for fold, reports in folds.items() if lost(reports) is not None]
            if losing:
                found.append(f"it lost to buy-and-hold in walk-forward fold(s) {', '.join(losing)} of {len(folds)}")
        sweep = self.metrics.get("sweep")
        if isinstance(sweep, Mapping) and sweep.get("survives_dsr") is False:
            dsr = sweep.get("dsr")
            value = f"{dsr:.3f}" if isinstance(dsr, int | float) else "not computable"
            found.append(
                f"its sweep ({sweep.get('n_trials')} trials) gives it a deflated Sharpe ratio {value}, below "
                f"{sweep.get('dsr_threshold')}: no evidence of an edge once the trials are accounted for"
            )
        return found

    def without_sha(self) -> ModelCard:
        """Return the copy embedded in the ONNX file (its own hash can't be inside it)."""
        return replace(self, onnx_sha256=None)

    def to_dict(self) -> dict[str, Any]:
        """Return the card as its JSON-layout dict."""
        if isinstance(self.action_mapping, ActionRange):
            mapping: object = {"low": self.action_mapping.low, "high": self.action_mapping.high}
        else:
            mapping = list(self.action_mapping)
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "created_at": self.created_at,
            "feature_spec": dict(self.feature_spec),
            "observation": {
                "shape": list(self.observation_shape),
                "dtype": self.observation_dtype,
                "normalization": {
                    "in_graph": True,
                    "mean": list(self.norm_mean),
                    "std": list(self.norm_std),
                    "std_floor": self.norm_std_floor,
                },
            },
            "action": {"space": self.action_space, "mapping": mapping},
            "onnx": {
                "input_name": self.onnx_input_name,
                "output_names": list(self.onnx_output_names),
                "action_output": self.onnx_action_output,
                "opset": self.onnx_opset,
                "sha256": self.onnx_sha256,
            },
            "training": {
                "run_id": self.run_id,
                "run_url": self.run_url,
                "config": dict(self.training_config),
                "data_range": dict(self.data_range),
                "code_version": self.code_version,
            },
            "metrics": dict(self.metrics),
        } | (
            {}
            if self.schema_version < 2
            else {
                "feature_distribution": None
                if self.feature_distribution is None
                else self.feature_distribution.to_dict()
            }
        )

    def to_json(self) -> str:
        """Serialise the card as strict JSON (no NaN or Infinity literals)."""
        try:
            return json.dumps(self.to_dict(), indent=2, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ModelCardError(f"model card {self.name!r} is not JSON-serialisable: {e}") from e

    @classmethod
    def from_dict(cls, data: object, source: str = "<dict>") -> ModelCard:
        """Build and validate a card from its JSON-layout dict."""
        return _parse(data, source)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> ModelCard:
        """Parse and validate a card from JSON text."""
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as e:
            raise ModelCardError(f"model card {source}: invalid JSON: {e}") from e
        return _parse(data, source)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read and validate a card file; the sha256 must be present."""
        card_path = Path(path)
        try:
            text = card_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelCardError(f"model card not found: {card_path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ModelCardError(f"model card {card_path}: cannot read: {e}") from e
        card = cls.from_json(text, source=str(card_path))
        if card.onnx_sha256 is None:
            raise ModelCardError(f"model card {card_path}: key 'onnx.sha256' is null; a card file needs the hash")
        return card

    def save(self, path: str | Path) -> None:
        """Write the card as JSON atomically (temp file, then rename)."""
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(self.to_json() + "\n", encoding="utf-8")
        os.replace(temporary, target)

    def verify_onnx(self, onnx_path: str | Path) -> None:
        """Raise `ModelCardError` unless the ONNX file's sha256 equals the card's."""
        if self.onnx_sha256 is None:
            raise ModelCardError(f"model card {self.name!r} has no onnx.sha256 to check {onnx_path} against")
        actual = file_sha256(onnx_path)
        if actual != self.onnx_sha256:
            raise ModelCardError(
                f"sha256 mismatch for {onnx_path}: file is {actual}, model card says {self.onnx_sha256}"
            )


def _start_figures(reports: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each strategy's `_START_FIGURES` out of a split's `{strategy: report}` block."""
    return {
        str(name): {key: report.get(key) for key in _START_FIGURES if key in report}
        for name, report in reports.items()
        if isinstance(report, Mapping)
    }


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise ModelCardError(f"ONNX file not found: {path}") from None
    return digest.hexdigest()


def card_path_for(onnx_path: str | Path) -> Path:
    """Return the card path that belongs beside an ONNX file (`x.onnx` -> `x.json`)."""
    return Path(onnx_path).with_suffix(".json")


def check_feature_spec(card: ModelCard) -> FeatureSpec:
    """Rebuild the card's feature spec with `bot.model.features` and check it agrees with the card's observation.

    The spec must be one this build can compute, give the card's observation shape, and (when fitted) carry
    the normalisation statistics baked into the graph. Raises `ModelCardError` otherwise.
    """
    try:
        # Imported here so that cards can be read without the feature code (training tools, old builds).
        from bot.model.features import STD_FLOOR, FeatureSpec
    except ImportError as e:
        raise ModelCardError(
            f"model card {card.name!r}: cannot compute its feature spec: bot.model.features is unavailable ({e})"
        ) from e
    try:
        spec = FeatureSpec.from_dict(card.feature_spec)
    except (ValueError, TypeError, KeyError) as e:
        raise ModelCardError(f"model card {card.name!r}: feature spec cannot be computed here: {e}") from e
    if spec.observation_shape != card.observation_shape:
        raise ModelCardError(
            f"model card {card.name!r}: feature spec gives observation shape {list(spec.observation_shape)} "
            f"but the card says {list(card.observation_shape)}"
        )
    if spec.is_fitted:
        mean, std = spec.observation_normalisation()
        floor = max(STD_FLOOR, card.norm_std_floor)
        same_mean = np.allclose(card.norm_mean, mean, rtol=1e-6, atol=1e-9)
        same_std = np.allclose(np.maximum(card.norm_std, floor), np.maximum(std, floor), rtol=1e-6, atol=1e-9)
        if not (same_mean and same_std):
            raise ModelCardError(
                f"model card {card.name!r}: the graph's normalisation (observation.normalization) differs from "
                "the feature spec's fitted statistics; the policy would see differently scaled inputs"
            )
    return spec


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _fail(source: str, message: str) -> ModelCardError:
    return ModelCardError(f"model card {source}: {message}")


def _section(data: Mapping[str, Any], key: str, keys: Sequence[str], source: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise _fail(source, f"key {key!r} must be an object, was {type(value).__name__}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise _fail(source, f"missing key(s) {', '.join(f'{key}.{k}' for k in missing)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise _fail(source, f"unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}")
    return value


def _typed(value: object, kind: type | tuple[type, ...], key: str, source: str) -> Any:
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _fail(source, f"key {key!r} must be {_kind_name(kind)}, was {value!r}")
    if not isinstance(value, kind):
        raise _fail(source, f"key {key!r} must be {_kind_name(kind)}, was {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _numbers(value: object, key: str, source: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise _fail(source, f"key {key!r} must be a list of numbers, was {type(value).__name__}")
    for i, item in enumerate(value):
        _typed(item, (int, float), f"{key}[{i}]", source)
    return tuple(float(item) for item in value)


def _parse(data: object, source: str) -> ModelCard:
    if not isinstance(data, Mapping):
        raise _fail(source, f"top level must be an object, was {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise _fail(source, f"unsupported schema_version {version!r}; this build reads {_readable()}")
    top_keys = _TOP_KEYS if version == 1 else (*_TOP_KEYS, *_V2_KEYS)
    missing = [k for k in top_keys if k not in data]
    if missing:
        raise _fail(source, f"missing key(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(top_keys))
    if unknown:
        raise _fail(source, f"unknown key(s) {', '.join(unknown)}")

    observation = _section(data, "observation", ("shape", "dtype", "normalization"), source)
    normalization = _section(
        observation, "normalization", ("in_graph", "mean", "std", "std_floor"), f"{source} (observation)"
    )
    if normalization["in_graph"] is not True:
        raise _fail(source, "key 'observation.normalization.in_graph' must be true (the only layout supported)")
    action = _section(data, "action", ("space", "mapping"), source)
    onnx = _section(data, "onnx", ("input_name", "output_names", "action_output", "opset", "sha256"), source)
    training = _section(data, "training", ("run_id", "run_url", "config", "data_range", "code_version"), source)

    shape = observation["shape"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise _fail(source, f"key 'observation.shape' must be a list of integers, was {shape!r}")
    space = _typed(action["space"], str, "action.space", source)
    raw_mapping = action["mapping"]
    mapping: tuple[float, ...] | ActionRange
    if space == "continuous":
        if not isinstance(raw_mapping, Mapping) or set(raw_mapping) != {"low", "high"}:
            raise _fail(source, f"key 'action.mapping' must be {{low, high}} for continuous, was {raw_mapping!r}")
        mapping = ActionRange(
            low=float(_typed(raw_mapping["low"], (int, float), "action.mapping.low", source)),
            high=float(_typed(raw_mapping["high"], (int, float), "action.mapping.high", source)),
        )
    else:
        mapping = _numbers(raw_mapping, "action.mapping", source)
    output_names = onnx["output_names"]
    if not isinstance(output_names, list) or not all(isinstance(n, str) for n in output_names):
        raise _fail(source, f"key 'onnx.output_names' must be a list of strings, was {output_names!r}")
    data_range = _typed(training["data_range"], Mapping, "training.data_range", source)
    for key, value in data_range.items():
        _typed(value, str, f"training.data_range.{key}", source)
    distribution = None
    if data.get("feature_distribution") is not None:
        try:
            distribution = FeatureDistribution.from_dict(data["feature_distribution"])
        except DistributionError as e:
            raise _fail(source, f"key 'feature_distribution': {e}") from None

    try:
        return ModelCard(
            name=_typed(data["name"], str, "name", source),
            created_at=_typed(data["created_at"], str, "created_at", source),
            feature_spec=_typed(data["feature_spec"], Mapping, "feature_spec", source),
            observation_shape=tuple(shape),
            observation_dtype=_typed(observation["dtype"], str, "observation.dtype", source),
            norm_mean=_numbers(normalization["mean"], "observation.normalization.mean", source),
            norm_std=_numbers(normalization["std"], "observation.normalization.std", source),
            norm_std_floor=float(
                _typed(normalization["std_floor"], (int, float), "observation.normalization.std_floor", source)
            ),
            action_space=space,
            action_mapping=mapping,
            onnx_input_name=_typed(onnx["input_name"], str, "onnx.input_name", source),
            onnx_output_names=tuple(output_names),
            onnx_action_output=_typed(onnx["action_output"], str, "onnx.action_output", source),
            onnx_opset=_typed(onnx["opset"], int, "onnx.opset", source),
            onnx_sha256=_typed(onnx["sha256"], (str, type(None)), "onnx.sha256", source),
            run_id=_typed(training["run_id"], (str, type(None)), "training.run_id", source),
            run_url=_typed(training["run_url"], (str, type(None)), "training.run_url", source),
            training_config=_typed(training["config"], Mapping, "training.config", source),
            data_range=data_range,
            code_version=_typed(training["code_version"], str, "training.code_version", source),
            metrics=_typed(data["metrics"], Mapping, "metrics", source),
            feature_distribution=distribution,
            schema_version=version,
        )
    except _InvalidCard as e:
        raise _fail(source, e.detail) from None


def _check_card(card: ModelCard) -> None:
    where = f"model card {card.name!r}" if isinstance(card.name, str) else "model card"

    def fail(message: str) -> ModelCardError:
        return _InvalidCard(where, message)

    if isinstance(card.schema_version, bool) or card.schema_version not in READABLE_VERSIONS:
        raise fail(f"unsupported schema_version {card.schema_version!r}; this build reads {_readable()}")
    if not isinstance(card.name, str) or not card.name:
        raise fail(f"name must be a non-empty string, was {card.name!r}")
    if not isinstance(card.feature_spec, Mapping) or not card.feature_spec:
        raise fail("feature_spec must be a non-empty object (bot.model.features.FeatureSpec.to_dict())")
    shape = card.observation_shape
    if (
        not isinstance(shape, tuple)
        or not shape
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise fail(f"observation shape must be a non-empty list of positive integers, was {shape!r}")
    if card.observation_dtype not in _DTYPES:
        raise fail(f"observation dtype must be one of {list(_DTYPES)}, was {card.observation_dtype!r}")
    size = math.prod(shape)
    for label, values in (("mean", card.norm_mean), ("std", card.norm_std)):
        if len(values) != size:
            raise fail(
                f"normalization {label} has {len(values)} values but observation shape {list(shape)} holds {size}"
            )
        if not all(math.isfinite(v) for v in values):
            raise fail(f"normalization {label} must be finite")
    if any(v < 0 for v in card.norm_std):
        raise fail("normalization std must be >= 0")
    if not math.isfinite(card.norm_std_floor) or card.norm_std_floor <= 0:
        raise fail(f"normalization std_floor must be finite and > 0, was {card.norm_std_floor}")

    if card.action_space == "discrete":
        if not isinstance(card.action_mapping, tuple) or len(card.action_mapping) < 2:
            raise fail(f"discrete action mapping must list >= 2 target positions, was {card.action_mapping!r}")
        bad = [v for v in card.action_mapping if not -1.0 <= v <= 1.0]
        if bad:
            raise fail(f"discrete action mapping targets must be in [-1, 1], got {bad}")
    elif card.action_space == "continuous":
        rng = card.action_mapping
        if not isinstance(rng, ActionRange):
            raise fail(f"continuous action mapping must be {{low, high}}, was {rng!r}")
        if not -1.0 <= rng.low < rng.high <= 1.0:
            raise fail(f"continuous action mapping needs -1 <= low < high <= 1, was low={rng.low} high={rng.high}")
    else:
        raise fail(f"action space must be 'discrete' or 'continuous', was {card.action_space!r}")

    if not card.onnx_input_name:
        raise fail("onnx input_name must be a non-empty string")
    names = card.onnx_output_names
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise fail(f"onnx output_names must be distinct non-empty strings, was {list(names)}")
    if card.onnx_action_output not in names:
        raise fail(f"onnx action_output {card.onnx_action_output!r} is not among output_names {list(names)}")
    if card.onnx_input_name in names:
        raise fail(f"onnx input_name {card.onnx_input_name!r} is also an output name")
    if isinstance(card.onnx_opset, bool) or not isinstance(card.onnx_opset, int) or card.onnx_opset < 17:
        raise fail(f"onnx opset must be an integer >= 17, was {card.onnx_opset!r}")
    if card.onnx_sha256 is not None and not _SHA256.match(card.onnx_sha256):
        raise fail(f"onnx sha256 must be 64 lowercase hex digits, was {card.onnx_sha256!r}")
    if not isinstance(card.data_range, Mapping) or not {"start", "end"} <= set(card.data_range):
        raise fail(f"training data_range needs 'start' and 'end' (ISO-8601), was {card.data_range!r}")
    distribution = card.feature_distribution
    if distribution is not None:
        if card.schema_version < 2:
            raise fail("a feature_distribution needs schema_version >= 2")
        spec_names: object = card.feature_spec.get("names")
        if isinstance(spec_names, list | tuple) and list(distribution.names) != list(spec_names):
            raise fail(
                f"feature_distribution covers {list(distribution.names)} "
                f"but the feature spec computes {list(spec_names)}"
            )


def _readable() -> str:
    return ", ".join(str(v) for v in READABLE_VERSIONS)
