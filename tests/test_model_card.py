"""Model card: JSON round trips, strict validation with clear errors, sha256 checks."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.model.card import (
    SCHEMA_VERSION,
    ActionRange,
    ModelCard,
    ModelCardError,
    card_path_for,
    check_feature_spec,
    file_sha256,
)

SPEC = {"names": ["log_return", "volume_z"], "window": 3}


def _card(**overrides: Any) -> ModelCard:
    fields: dict[str, Any] = {
        "name": "best_model",
        "feature_spec": SPEC,
        "observation_shape": (8,),
        "action_space": "discrete",
        "action_mapping": (-1.0, 0.0, 1.0),
        "norm_mean": (0.0,) * 8,
        "norm_std": (1.0,) * 8,
        "norm_std_floor": 1e-8,
        "data_range": {"start": "2024-01-01T00:00:00+00:00", "end": "2024-06-01T00:00:00+00:00"},
        "onnx_sha256": "ab" * 32,
        "run_id": "run-1",
        "training_config": {"seed": 1, "ppo": {"lr": 3e-4}},
        "code_version": "abc123",
        "metrics": {"test": {"policy": {"sharpe": 1.2, "profit_factor": "inf", "win_rate": None}}},
        "created_at": "2025-01-01T00:00:00+00:00",
    }
    fields.update(overrides)
    return ModelCard(**fields)


def test_json_round_trip_discrete_and_continuous() -> None:
    for card in (_card(), _card(action_space="continuous", action_mapping=ActionRange(-0.5, 1.0), run_id=None)):
        text = card.to_json()
        again = ModelCard.from_json(text)
        assert again == card
        assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    payload = json.loads(_card(action_space="continuous", action_mapping=ActionRange(-1.0, 1.0)).to_json())
    assert payload["action"] == {"space": "continuous", "mapping": {"low": -1.0, "high": 1.0}}
    assert json.loads(_card().to_json())["action"] == {"space": "discrete", "mapping": [-1.0, 0.0, 1.0]}


def test_target_of_maps_actions_to_positions() -> None:
    assert _card().target_of(0) == -1.0 and _card().target_of(2) == 1.0
    continuous = _card(action_space="continuous", action_mapping=ActionRange(-0.5, 0.5))
    assert continuous.target_of(0.9) == 0.5 and continuous.target_of(-0.2) == -0.2


def test_save_and_load(tmp_path: Path) -> None:
    card = _card()
    path = tmp_path / "best_model.json"
    card.save(path)
    assert ModelCard.load(path) == card
    assert not list(tmp_path.glob("*.tmp"))
    assert card_path_for(tmp_path / "best_model.onnx") == path


def test_load_refuses_missing_invalid_and_unhashed_cards(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match=r"model card not found: .*nope\.json"):
        ModelCard.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelCardError, match=r"bad.json: invalid JSON"):
        ModelCard.load(bad)
    bad.write_text(_card().to_json().replace('"seed": 1', '"seed": NaN'))
    with pytest.raises(ModelCardError, match="invalid JSON: NaN is not valid JSON"):
        ModelCard.load(bad)
    unhashed = tmp_path / "unhashed.json"
    _card().without_sha().save(unhashed)
    with pytest.raises(ModelCardError, match=r"'onnx.sha256' is null"):
        ModelCard.load(unhashed)


def _mutated(edit: Any) -> str:
    data = json.loads(_card().to_json())
    edit(data)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema_version=3), "unsupported schema_version 3; this build reads 1, 2"),
        (lambda d: d.pop("feature_spec"), "missing key.*feature_spec"),
        (lambda d: d["onnx"].pop("sha256"), r"missing key\(s\) onnx.sha256"),
        (lambda d: d.update(extra=1), r"unknown key\(s\) extra"),
        (lambda d: d["observation"].update(shape=[8.5]), "'observation.shape' must be a list of integers"),
        (lambda d: d["onnx"].update(input_name=3), "'onnx.input_name' must be str, was 3"),
        (lambda d: d["onnx"].update(opset=True), "'onnx.opset' must be int, was True"),
        (lambda d: d["training"].update(run_id=5), "'training.run_id' must be str or null"),
        (
            lambda d: d["observation"]["normalization"].update(mean=[0.0] * 7),
            r"normalization mean has 7 values but observation shape \[8\] holds 8",
        ),
        (
            lambda d: d["observation"]["normalization"].update(std=["a"] * 8),
            r"'observation.normalization.std\[0\]' must be int or float",
        ),
        (lambda d: d["observation"]["normalization"].update(in_graph=False), "in_graph' must be true"),
        (lambda d: d["observation"].update(dtype="int8"), "observation dtype must be one of"),
        (lambda d: d["action"].update(mapping=[-2.0, 0.0, 1.0]), r"targets must be in \[-1, 1\], got \[-2.0\]"),
        (lambda d: d["action"].update(mapping=[1.0]), "must list >= 2 target positions"),
        (lambda d: d["action"].update(space="continuous"), "must be {low, high} for continuous"),
        (lambda d: d["action"].update(space="box"), "action space must be 'discrete' or 'continuous'"),
        (lambda d: d["onnx"].update(action_output="act"), "action_output 'act' is not among output_names"),
        (lambda d: d["onnx"].update(sha256="XYZ"), "sha256 must be 64 lowercase hex digits"),
        (lambda d: d["onnx"].update(opset=11), "opset must be an integer >= 17"),
        (lambda d: d["training"].update(data_range={"start": "2024"}), "data_range needs 'start' and 'end'"),
        (lambda d: d.update(feature_spec={}), "feature_spec must be a non-empty object"),
    ],
)
def test_invalid_cards_raise_clear_errors(edit: Any, message: str) -> None:
    with pytest.raises(ModelCardError, match=message) as info:
        ModelCard.from_json(_mutated(edit), source="cards/best_model.json")
    assert str(info.value).startswith("model card cards/best_model.json: ")


def test_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    onnx_file = tmp_path / "best_model.onnx"
    onnx_file.write_bytes(b"graph bytes")
    digest = hashlib.sha256(b"graph bytes").hexdigest()
    assert file_sha256(onnx_file) == digest
    _card(onnx_sha256=digest).verify_onnx(onnx_file)
    onnx_file.write_bytes(b"graph bytes, tampered")
    with pytest.raises(ModelCardError, match=f"sha256 mismatch for .*best_model.onnx: file is .* says {digest}"):
        _card(onnx_sha256=digest).verify_onnx(onnx_file)
    with pytest.raises(ModelCardError, match="ONNX file not found"):
        _card(onnx_sha256=digest).verify_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelCardError, match=r"has no onnx\.sha256"):
        _card().without_sha().verify_onnx(onnx_file)


def test_non_json_metrics_are_refused() -> None:
    with pytest.raises(ModelCardError, match="not JSON-serialisable"):
        _card(metrics={"sharpe": float("nan")}).to_json()


_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
_text = st.text(min_size=1, max_size=12)


@st.composite
def _cards(draw: st.DrawFn) -> ModelCard:
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    size = 1
    for dim in shape:
        size *= dim
    continuous = draw(st.booleans())
    if continuous:
        low = draw(st.floats(-1.0, 0.0))
        mapping: tuple[float, ...] | ActionRange = ActionRange(low, draw(st.floats(low + 1e-3, 1.0)))
    else:
        mapping = tuple(draw(st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=5)))
    return _card(
        name=draw(_text),
        feature_spec=draw(st.dictionaries(_text, st.integers() | _text, min_size=1, max_size=3)),
        observation_shape=shape,
        action_space="continuous" if continuous else "discrete",
        action_mapping=mapping,
        norm_mean=tuple(draw(st.lists(_finite, min_size=size, max_size=size))),
        norm_std=tuple(draw(st.lists(st.floats(0.0, 1e6), min_size=size, max_size=size))),
        onnx_sha256=draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64)),
        run_url=draw(st.none() | _text),
        metrics=draw(st.dictionaries(_text, _finite | st.none() | _text, max_size=3)),
    )


@settings(max_examples=60, deadline=None)
@given(_cards())
def test_round_trip_holds_for_any_valid_card(card: ModelCard) -> None:
    assert ModelCard.from_json(card.to_json()) == card


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _finite | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["schema_version", "name", "feature_spec", "observation", "action", "onnx", "training", "metrics"]),
    st.sampled_from([None, "shape", "dtype", "mapping", "space", "sha256", "output_names", "config", "data_range"]),
    _json,
)
def test_any_corruption_raises_model_card_error_only(outer: str, inner: str | None, value: object) -> None:
    data = json.loads(_card().to_json())
    path = [outer]
    if inner is not None and isinstance(data[outer], dict) and inner in data[outer]:
        path.append(inner)
    parent = data if len(path) == 1 else data[outer]
    parent[path[-1]] = value
    try:
        card = ModelCard.from_json(json.dumps(data))
    except ModelCardError:
        return
    # Accepted only if the value is a valid one, which the card then holds and round-trips.
    held = card.to_dict()
    for key in path:
        held = held[key]
    assert held == value
    assert ModelCard.from_json(card.to_json()) == card


def test_feature_spec_check_without_the_feature_code_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bot.model.features", None)  # makes `import bot.model.features` raise ImportError
    with pytest.raises(ModelCardError, match=r"cannot compute its feature spec: bot\.model\.features is unavailable"):
        check_feature_spec(_card())


def test_feature_spec_check_uses_bot_features() -> None:
    from bot.model.features import FeatureSpec

    spec = FeatureSpec(window=4)
    size = spec.observation_size
    card = _card(
        feature_spec=spec.to_dict(), observation_shape=(size,), norm_mean=(0.0,) * size, norm_std=(1.0,) * size
    )
    assert check_feature_spec(card) == spec
    with pytest.raises(ModelCardError, match="feature spec cannot be computed here: feature spec is missing keys"):
        check_feature_spec(_card())


def test_the_daemon_says_at_start_what_the_card_says_of_the_model_out_of_sample(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from adapters.costs import CostModel
    from adapters.data.ohlcv import load_ohlcv
    from adapters.data.sample import sample_path
    from bot.evaluation import buy_and_hold_targets, evaluate_positions
    from bot.model.policy import OnnxPolicy
    from tests.support.policy_model import export_policy, fitted_spec, random_weights

    frame = load_ohlcv(sample_path()).iloc[-3_000:]
    spec = fitted_spec(frame, train_rows=2_000, window=8)
    held_out = evaluate_positions(frame.iloc[2_000:], buy_and_hold_targets(frame.iloc[2_000:]), CostModel(), "1h")
    sweep = {"name": "s", "trial": 3, "best": True, "n_trials": 8, "pbo": 0.41, "dsr": 0.2, "dsr_threshold": 0.95}
    metrics = {
        "test": {"buy_and_hold": held_out.to_dict()},
        "purge": {"embargo_bars": 7},
        "walk_forward": {"folds": {"0": {"buy_and_hold": held_out.to_dict()}}, "this_fold": 0},
        "sweep": {**sweep, "survives_dsr": False, "metric": {"name": "validation/sharpe"}},
    }
    data_range = {"start": "2025-06-01", "end": "2025-11-30"}
    model = export_policy(
        tmp_path / "a", spec, random_weights(spec, 2), (0.0, 1.0), metrics=metrics, data_range=data_range
    )
    bare = export_policy(tmp_path / "b", spec, random_weights(spec, 2), (0.0, 1.0))
    with capture_logs() as logs:
        OnnxPolicy.load(model)
        OnnxPolicy.load(bare)
    with_figures, without = [e for e in logs if e["event"] == "policy_loaded"]
    # The card's own figures against the model are said once, as a warning: only this card has any.
    (doubt,) = [e for e in logs if e["event"] == "model_evidence_weak"]
    assert doubt["log_level"] == "warning" and doubt["path"] == str(model)
    assert doubt["doubts"] == [
        "its sweep (8 trials) gives it a deflated Sharpe ratio 0.200, below 0.95: no evidence of an edge once the "
        "trials are accounted for"
    ]
    figures = with_figures["out_of_sample"]
    assert figures["test"]["buy_and_hold"] == {
        "total_return": held_out.total_return,
        "sharpe": held_out.sharpe,
        "max_drawdown": held_out.max_drawdown,
        "trade_count": held_out.trade_count,
    }
    assert figures["walk_forward"] == {"0": figures["test"]}
    assert figures["sweep"] == {**sweep, "survives_dsr": False}  # the figures, not the sweep's whole config
    assert figures["purge"] == {"embargo_bars": 7} and figures["data_end"] == "2025-11-30"
    assert "out_of_sample" not in without, "a card without evaluation figures prints none"


def test_doubts_name_every_figure_of_the_card_that_speaks_against_the_model() -> None:
    def split(ours: float, theirs: float) -> dict[str, Any]:
        return {"policy": {"total_return": ours}, "buy_and_hold": {"total_return": theirs}}

    strong = {
        "test": split(0.30, 0.10),
        "walk_forward": {"folds": {"0": split(0.2, 0.1), "1": split(0.1, 0.0)}},
        "sweep": {"n_trials": 8, "dsr": 0.99, "dsr_threshold": 0.95, "survives_dsr": True},
    }
    assert _card(metrics=strong).doubts() == []
    assert _card(metrics={}).doubts() == []
    weak = {
        "test": split(-0.2207, -0.1488),
        "walk_forward": {"folds": {"0": split(0.2, 0.1), "1": split(-0.1, 0.0), "2": split(0.0, 0.05)}},
        "sweep": {"n_trials": 8, "dsr": None, "dsr_threshold": 0.95, "survives_dsr": False},
    }
    assert _card(metrics=weak).doubts() == [
        "on its test split the policy returned -22.07% after costs, buy-and-hold -14.88%",
        "it lost to buy-and-hold in walk-forward fold(s) 1, 2 of 3",
        "its sweep (8 trials) gives it a deflated Sharpe ratio not computable, below 0.95: no evidence of an edge "
        "once the trials are accounted for",
    ]
