"""`ai-trading models publish RUN`: make a training run's exported model the daemon's default model.

`ai-trading train` keeps every run's export in its own run directory (``outputs/<run_id>/models/``) and
touches the daemon's model path (``models/best_model.onnx``, `bot.model_path`'s default) only with
``training.publish=true``. Publishing is a separate, deliberate step::

    ai-trading models publish train-20250101-120000-ab12            # a run id under outputs/
    ai-trading models publish outputs/train-20250101-120000-ab12     # or its directory
    ai-trading models publish RUN --to models --output-dir outputs

The model is loaded exactly as the daemon loads it (card, sha256, feature spec, onnxruntime) before
anything is copied, so a model the daemon would refuse is never published; the files are written under
temporary names and renamed into place, so a daemon reloading mid-publish never sees half a model. The
card names the training run (`training.run_id`), which the daemon logs when it loads the model.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.model.card import ModelCardError
from monitoring.logging import configure_logging, report_error

PROG = "ai-trading models"
MODEL_FILE = "best_model.onnx"
"""The exported model's file name in a run's models/ folder and in the daemon's model folder."""


class PublishError(Exception):
    """The run or its model cannot be published; the message says which and why."""


def _fold_number(path: Path) -> int:
    match = re.fullmatch(r"fold(\d+)", path.name)
    return int(match.group(1)) if match else -1


def run_model_dir(run: str | Path, output_dir: str | Path = "outputs") -> Path:
    """Return the folder holding a run's exported model; `run` is a run directory or a run id under `output_dir`.

    A walk-forward run exports one model per fold; its last fold's model is the run's model (the one
    trained on the most recent data), as `ai-trading train training.publish=true` publishes it.
    """
    given = Path(run)
    run_dir = given if given.is_dir() else Path(output_dir) / str(run)
    if not run_dir.is_dir():
        raise PublishError(f"no run {str(run)!r}: neither a directory nor a run id under {output_dir}/")
    for candidate in (run_dir / "models", run_dir):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    folds = sorted((p for p in run_dir.glob("fold*") if (p / "models" / MODEL_FILE).is_file()), key=_fold_number)
    if folds:
        return folds[-1] / "models"
    raise PublishError(f"run {run_dir} has no exported model ({MODEL_FILE} under models/); did training finish?")


def publish_model(model_dir: Path, target_dir: Path) -> Path:
    """Check the model in `model_dir` as the daemon would, copy its files into `target_dir`; return the model path."""
    from bot.model.policy import OnnxPolicy  # onnxruntime: only when publishing

    source = model_dir / MODEL_FILE
    try:
        OnnxPolicy.load(source)
    except ModelCardError as e:
        raise PublishError(f"refusing to publish {source}: {e}") from e
    target_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    staged: list[tuple[Path, Path]] = []
    try:
        for path in files:
            temporary = target_dir / f".{path.name}.publishing"
            shutil.copy2(path, temporary)
            staged.append((temporary, target_dir / path.name))
        # The card before the model: a reader that sees the new model always finds its card beside it.
        staged.sort(key=lambda pair: pair[1].suffix == ".onnx")
        for temporary, final in staged:
            os.replace(temporary, final)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return target_dir / MODEL_FILE


def build_parser() -> argparse.ArgumentParser:
    """The command line of `ai-trading models`."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Manage the models the daemon loads (training never publishes unless asked)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    publish = commands.add_parser(
        "publish",
        help="copy a run's exported model to the daemon's model folder",
        description="Check a run's exported model as the daemon would and copy it (ONNX, card, weights, config) "
        "to the daemon's model folder, where bot.model_path points by default.",
    )
    publish.add_argument("run", metavar="RUN", help="run directory, or a run id under --output-dir")
    publish.add_argument("--output-dir", default="outputs", help="where run directories are (default outputs/)")
    publish.add_argument("--to", default="models", help="the daemon's model folder (default models/)")
    publish.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ai-trading models`; exit 0 ok, 1 error, 2 bad usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    configure_logging(args.log_level)
    try:
        model_dir = run_model_dir(args.run, args.output_dir)
        published = publish_model(model_dir, Path(args.to))
    except PublishError as e:
        report_error(PROG, e, event="model_publish_failed")
        return 1
    sys.stdout.write(f"published {model_dir / MODEL_FILE} -> {published} (card beside it; the daemon default)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
