"""`ai-trading data lookahead`: finds a planted look-ahead and a planted recursion, and passes our own features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.model.features import FeatureSpec
from bot.model.lookahead import audit, load_feature_function, spec_features

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def candles_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 real bundled candles (a user's own file)."""
    path = tmp_path_factory.mktemp("lookahead") / "BTC_USDT-1h.parquet"
    load_ohlcv(sample_path()).iloc[-3000:].to_parquet(path)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "data", "lookahead", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_our_features_have_no_lookahead_and_no_recursion(candles_file: Path) -> None:
    done = _run("--file", str(candles_file), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["ok"] and set(report["features"]) == set(FeatureSpec().names)
    assert report["features"]["volatility"]["warmup_bars"] > 0 and len(report["cuts"]) == 20


@pytest.mark.parametrize(
    ("function", "kind", "words"),
    [
        ("centred_mean", "lookahead_values", "changed when later candles were added"),
        ("running_mean", "recursion_values", "depends on earlier history beyond its warm-up of 4 bars"),
    ],
)
def test_a_planted_leak_is_found_named_and_fails_the_command(
    candles_file: Path, function: str, kind: str, words: str
) -> None:
    reference = f"tests.support.leaky_features:{function}"
    done = _run("--file", str(candles_file), "--no-builtin", "--feature", reference, "--warmup", "4")
    assert done.returncode == 1, done.stderr
    assert f"{function}" in done.stdout and "FAIL" in done.stdout and words in done.stdout, done.stdout
    # In process, the counts: the leaky feature's own kind is found, the clean one is not.
    frame = load_ohlcv(candles_file)
    leaky = load_feature_function(reference)
    clean = load_feature_function("tests.support.leaky_features:trailing_mean")
    report = audit(frame, [(leaky, {function: 4}), (clean, {"trailing_mean": 4})])
    verdict = report.verdicts[function]
    assert getattr(verdict, kind) > 0 and not verdict.is_clean
    assert report.verdicts["trailing_mean"].is_clean


def test_the_features_of_a_model_card_are_checked_and_bad_input_is_one_line(candles_file: Path, tmp_path: Path) -> None:
    spec = FeatureSpec(window=8)
    compute, warmups = spec_features(spec)
    assert set(compute(load_ohlcv(candles_file).iloc[:100]).columns) == set(warmups) == set(spec.names)
    card = tmp_path / "best_model.json"
    card.write_text(json.dumps({"feature_spec": spec.to_dict()}))
    assert _run("--file", str(candles_file), "--card", str(card)).returncode == 0
    done = _run("--file", str(candles_file), "--feature", "no_such_module:f")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("ai-trading data lookahead: --feature 'no_such_module:f'")
