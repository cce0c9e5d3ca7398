"""`ai-trading sweep` / `python -m training.sweep`: hyperparameter sweeps driven by a W&B sweep YAML.

The user guide's commands, same flags::

    ai-trading sweep --config sweep_config.yaml
    ai-trading sweep --config sweep_config.yaml --name "lr_and_layers_sweep" --count 20
    ai-trading sweep --config sweep_config.yaml --storage sqlite:///sweeps.db training.total_timesteps=50000

The YAML is W&B's own sweep schema (method, metric, parameters, early_terminate, run_cap, ...). Parameter
names are training config keys (`training.lr`, `model.d_model`, `env.reward_scaling`; `model` alone picks a
preset; `training.lr` is the flat alias of `training.ppo.learning_rate`, either naming the one setting); each
trial turns its parameters into Hydra overrides and runs `training.train.run` in this process.

Backends (`--backend auto` picks, and logs which and why, before anything runs):
- `wandb`: `wandb.sweep` + `wandb.agent(function=...)` when a W&B server is reachable with credentials. Every
  W&B sweep command needs a server and would fail or hang without one, so `auto` checks first: WANDB_MODE
  offline/disabled, no WANDB_API_KEY and no netrc entry, or no TCP answer within 2 s means no server. Scale
  out by running `ai-trading sweep --config ... --sweep-id ENTITY/PROJECT/ID` on each machine.
- `optuna`: the same YAML as a local Optuna study: grid → GridSampler, random → RandomSampler, bayes →
  TPESampler, hyperband → HyperbandPruner fed by every validation pass. With `--storage` (an Optuna RDB URL,
  e.g. sqlite:///sweeps.db or PostgreSQL) the study is resumable, and several processes or machines given the
  same storage and `--name` share it.

Honesty: the objective is always a validation metric (`validation/<field>` of the checkpoint the run
selected on the validation split); a `test/...` metric is refused. The test return of each trial is shown
for information only. Results: a table on stdout, `<output-dir>/sweeps/<name>/sweep_summary.json` and
`trials.parquet`; every trial is an ordinary run directory under `<output-dir>/` (reports and the dashboard
read it like any other run).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from bot.errors import ConfigError
from bot.ledger.urls import redacted
from monitoring.logging import configure_logging
from monitoring.wandb_server import server_status as wandb_server_status
from training.cli import EXIT_ERROR, EXIT_OK, print_error
from training.sweep.estimate import estimate_duration, format_duration
from training.sweep.optuna_study import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_SEED,
    existing_trials,
    open_study,
    rows_from_study,
    run_optuna,
    sampler_for,
    trial_budget,
)
from training.sweep.overfitting import stamp_cards
from training.sweep.overrides import format_value, override_keys, to_overrides
from training.sweep.results import SUMMARY_FILE, format_results, write_results
from training.sweep.spec import (
    RESERVED_KEYS,
    SweepConfigError,
    SweepError,
    SweepSpec,
)
from training.sweep.spec_file import load_sweep_config
from training.sweep.trial import TrialResult, TrialRunner
from training.sweep.wandb_backend import run_wandb
from training.sweep.workers import (
    Worker,
    shares,
    start_workers,
    stop_workers,
    threads_per_worker,
    usable_cores,
    wait_workers,
)

log = structlog.get_logger()

EXIT_CONFIG, EXIT_INTERRUPTED = 2, 130
PROG = "ai-trading sweep"
THREADS_KEY = "training.ppo.torch_threads"
"""Each worker's share of the cores, unless the user set it (also spelt `training.torch_threads`)."""


# --- backend choice -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs the sweep, and why."""

    backend: str
    """wandb or optuna."""
    reason: str
    """One line a user can act on."""


def choose_backend(requested: str, env: Mapping[str, str] | None = None, timeout_s: float = 2.0) -> BackendChoice:
    """Resolve --backend; `wandb` without a server is a SweepError (it would fail or hang), `auto` falls back."""
    if requested == "optuna":
        return BackendChoice("optuna", "requested with --backend optuna")
    available, why = wandb_server_status(env, timeout_s)
    if requested == "wandb":
        if not available:
            raise SweepError(f"--backend wandb: {why}; use --backend optuna (or auto) to sweep locally")
        return BackendChoice("wandb", f"requested with --backend wandb; {why}")
    if available:
        return BackendChoice("wandb", why)
    return BackendChoice("optuna", f"{why}; running a local Optuna study instead")


# --- command line -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """Everything decided before the first trial."""

    spec: SweepSpec
    name: str
    slug: str
    backend: BackendChoice
    runner: TrialRunner
    user_overrides: tuple[str, ...]
    added_overrides: tuple[str, ...]


def slugify(name: str) -> str:
    """A file-system-safe form of a sweep name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "sweep"


def probe_parameter_sets(spec: SweepSpec) -> list[dict[str, Any]]:
    """A few parameter sets that together use every categorical value and both ends of every range."""
    ends: dict[str, list[Any]] = {}
    for p in spec.parameters:
        if p.distribution in ("constant", "categorical") or (spec.method == "grid" and p.distribution != "constant"):
            ends[p.name] = list(p.values) if spec.method != "grid" else p.grid_values()
        elif p.distribution == "int_uniform":
            ends[p.name] = [int(p.low), int(p.high)]
        elif p.distribution == "log_uniform":
            ends[p.name] = [math.exp(p.low), math.exp(p.high)]
        elif p.distribution in ("normal", "q_normal"):
            ends[p.name] = [p._quantise(p.mu)]
        elif p.distribution == "log_normal":
            ends[p.name] = [math.exp(p.mu)]
        else:
            ends[p.name] = [p._quantise(p.low), p._quantise(p.high)]
    width = min(max(len(v) for v in ends.values()), 64)
    return [{name: values[i % len(values)] for name, values in ends.items()} for i in range(width)]


def prepare(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> SweepPlan:
    """Validate the sweep against the training config and pick the backend; errors name the problem."""
    from training.train import canonical_key, check_hardware, load_train_config

    spec = load_sweep_config(args.config)
    name = args.name or spec.name or Path(args.config).stem
    slug = slugify(name)
    user = tuple(args.overrides)
    # Compared in today's spelling: `training.lr` and `training.ppo.learning_rate` are one setting.
    swept: dict[str, str] = {}
    for p in spec.parameters:
        earlier = swept.setdefault(canonical_key(p.name), p.name)
        if earlier != p.name:
            raise SweepConfigError(f"{args.config}: parameters {earlier} and {p.name} are the same setting; keep one")
    for key in sorted(override_keys(user)):
        if key in RESERVED_KEYS:
            raise SweepConfigError(f"override {key}=...: set by the sweep ({RESERVED_KEYS[key]})")
        if canonical_key(key) in swept:
            parameter = swept[canonical_key(key)]
            raise SweepConfigError(f"override {key}=...: {parameter} is a sweep parameter; remove one of them")
    cfg = load_train_config(user)
    if cfg.data.validation_fraction <= 0:
        raise SweepConfigError("data.validation_fraction: a sweep needs a validation split (> 0) to score trials")
    added: list[str] = []
    user_keys = {canonical_key(key) for key in override_keys(user)} | set(swept)
    if spec.metric.goal == "maximize" and "training.select_metric" not in user_keys:
        added.append(f"training.select_metric={spec.metric.field}")  # select each checkpoint on the objective
    wandb_on = cfg.wandb.enabled
    if "wandb.enabled" not in user_keys:
        # The user guide's sweep is a W&B workflow: every trial is a W&B run (offline without a server).
        added.append("wandb.enabled=true")
        wandb_on = True
    if wandb_on and "wandb.group" not in user_keys:
        added.append(f"wandb.group={format_value(name)}")
    workers = getattr(args, "workers", 1)
    if workers > 1:
        # Each worker process gets its share of the cores (training.ppo.torch_threads), never more than there are.
        requested = cfg.training.ppo.torch_threads if THREADS_KEY in user_keys else None
        threads = threads_per_worker(workers, requested, usable_cores())
        if requested is None:
            added.append(f"{THREADS_KEY}={threads}")
    output_dir = Path(args.output_dir)
    runner = TrialRunner(spec.metric, (*user, *added), output_dir, output_dir / "sweeps" / slug, slug)
    for i, params in enumerate(probe_parameter_sets(spec)):
        try:
            check_hardware(load_train_config([*runner.base_overrides, *to_overrides(params)]).training.ppo)
        except ConfigError as e:
            raise SweepConfigError(f"{args.config}: parameters {params} (probe {i}) are not a valid config: {e}") from e
    ignored = sorted(k for k in ("program", "command", "controller") if k in spec.raw)
    if ignored:
        log.info("sweep_keys_ignored", keys=ignored, note="trials run in this process (wandb.agent function / Optuna)")
    backend = choose_backend(args.backend, env)
    if workers > 1 and backend.backend != "optuna":
        raise SweepConfigError(
            "--workers runs Optuna trials in parallel processes; for a W&B sweep start one `ai-trading sweep "
            "--sweep-id ENTITY/PROJECT/ID` agent per process instead (or --backend optuna)"
        )
    if workers > 1 and getattr(args, "storage", None) == "sqlite:///:memory:":
        raise SweepConfigError(
            "--workers: the workers share the study through --storage; an in-memory one is not shared"
        )
    if args.sweep_id and backend.backend != "wandb":
        why = backend.reason.split(";")[0]
        raise SweepError(
            f"--sweep-id {args.sweep_id}: joining a W&B sweep needs a usable W&B server ({why});"
            " to share a sweep between machines without one, give every worker the same --storage postgresql://..."
            " and --name"
        )
    return SweepPlan(spec, name, slug, backend, runner, user, tuple(added))


def preview(plan: SweepPlan, count: int, seed: int | None, existing: int = 0) -> list[dict[str, Any]]:
    """The parameter sets of the next `count` trials after `existing` ones, exactly as the study will draw them.

    Exact for random and grid (on one worker) and for bayes's random start-up trials; later bayes trials follow
    the results.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = plan.spec
    sampler = sampler_for(spec, seed, number_offset=existing, startup_only=spec.method == "bayes")
    study = optuna.create_study(sampler=sampler, direction=spec.metric.goal)
    sets: list[dict[str, Any]] = []

    def record(trial: optuna.Trial) -> float:
        sets.append(spec.sample(trial))
        return 0.0

    # optimize, not ask/tell: GridSampler stops the study itself once the grid is done.
    study.optimize(record, n_trials=min(count, spec.grid_size()) if spec.method == "grid" else count)
    return sets


def format_plan(plan: SweepPlan, sets: Sequence[Mapping[str, Any]], storage: str | None, first_number: int = 0) -> str:
    """The dry-run text: backend and why, the parameter mapping, and each trial's overrides."""
    spec = plan.spec
    lines = [
        f"sweep {plan.name!r}: method {spec.method}, metric {spec.metric.name} ({spec.metric.goal}; measured on the "
        "validation split only)",
        f"backend: {plan.backend.backend} ({plan.backend.reason})",
        f"storage: {redacted(storage) if storage else 'in memory (pass --storage sqlite:///sweeps.db to resume it)'}"
        + (f", {first_number} trials already in the study" if first_number else ""),
        f"outputs: trial runs under {plan.runner.output_dir}/, summary in {plan.runner.sweep_dir}/",
        "parameters:",
    ]
    width = max(len(p.name) for p in spec.parameters)
    lines += [f"  {p.name.ljust(width)}  {p.describe(spec.method)}" for p in spec.parameters]
    if spec.early_terminate is not None:
        h = spec.early_terminate
        lines.append(
            f"early_terminate: hyperband → HyperbandPruner(min_resource={h.min_resource()}, max_resource="
            f"{h.max_iter if h.max_iter is not None else 'auto'}, reduction_factor={h.eta}); one resource unit is "
            "one validation pass"
        )
    if spec.run_cap is not None:
        lines.append(f"run_cap: {spec.run_cap} trials over all workers")
    if plan.added_overrides:
        lines.append("added to every trial: " + " ".join(plan.added_overrides))
    note = " (bayes: TPE's random start-up trials; later ones follow the results)" if spec.method == "bayes" else ""
    lines.append(f"trials ({len(sets)}){note}:")
    for i, params in enumerate(sets, start=first_number):
        lines.append(f"  {i:>3}  " + shlex.join([*plan.user_overrides, *to_overrides(params)]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The `ai-trading sweep` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a hyperparameter sweep from a W&B sweep YAML: a W&B sweep when a server is reachable, "
        "else a local Optuna study. The objective is always a validation metric; the test split is never tuned on.",
        epilog="examples:\n"
        "  ai-trading sweep --config sweep_config.yaml\n"
        '  ai-trading sweep --config sweep_config.yaml --name "lr_and_layers_sweep" --count 20\n'
        "  ai-trading sweep --config sweep_config.yaml --storage sqlite:///sweeps.db data.start=2024-01-01\n"
        "  ai-trading sweep --config sweep_config.yaml --count 8 --workers 2\n"
        "  ai-trading sweep --config sweep_config.yaml --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="sweep_config.yaml", help="sweep YAML (W&B schema)")
    parser.add_argument("--name", help="sweep / study name (default: the YAML's name, else the file name)")
    parser.add_argument("--count", type=_positive_int, help="trials to run in this process")
    parser.add_argument("--backend", choices=("auto", "wandb", "optuna"), default="auto", help="default: auto")
    parser.add_argument(
        "--storage",
        help="Optuna RDB URL: sqlite:///sweeps.db (resumable) or postgresql://user@host/db (shared by machines)",
    )
    parser.add_argument("--project", help="W&B project (default: the YAML's, WANDB_PROJECT, or ai-trading)")
    parser.add_argument("--entity", help="W&B entity (default: the YAML's or WANDB_ENTITY)")
    parser.add_argument(
        "--sweep-id", help="join an existing W&B sweep (ENTITY/PROJECT/ID) instead of creating one (needs a server)"
    )
    parser.add_argument("--output-dir", default="outputs", help="root of the trial runs and sweep results")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"sampler seed: trial N's parameters depend only on (seed, N) (default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--heartbeat-s",
        type=float,
        default=DEFAULT_HEARTBEAT_S,
        help="with --storage: a worker's heartbeat; a trial silent for twice this long is marked failed "
        f"(default {DEFAULT_HEARTBEAT_S:g})",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="Optuna trials run at once in this many processes on this machine, sharing the study's storage "
        "(a SQLite file in the sweep directory unless --storage); each trains with cores/N torch threads (default 1)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the mapping and the trials' parameters, exit")
    parser.add_argument("--log-level", default=None, help="log level (default INFO)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides applied to every trial")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sweep from the command line; exit 0 ok, 1 error, 2 bad config, 130 interrupted."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    api_key = os.environ.get("WANDB_API_KEY")
    configure_logging(args.log_level, secrets=[api_key] if api_key else ())
    try:
        plan = prepare(args)
    except ConfigError as e:
        print_error(PROG, e)
        return EXIT_CONFIG
    except SweepError as e:
        print_error(PROG, e)
        return EXIT_ERROR
    spec, runner = plan.spec, plan.runner
    log.info("sweep_backend_selected", backend=plan.backend.backend, reason=plan.backend.reason, sweep=plan.name)
    if args.dry_run:
        existing = existing_trials(spec, plan.name, args.storage) if plan.backend.backend == "optuna" else 0
        count = trial_budget(spec, args.count, existing)
        sets = preview(plan, count, args.seed, existing)
        print(format_plan(plan, sets, args.storage, first_number=existing))
        print(format_duration(estimate_duration(runner.base_overrides, sets, runner.output_dir)))
        return EXIT_OK
    header: dict[str, Any] = {
        "name": plan.name,
        "backend": plan.backend.backend,
        "backend_reason": plan.backend.reason,
        "method": spec.method,
        "metric": dataclasses.asdict(spec.metric),
        "objective": f"{spec.metric.name} of each run's selected checkpoint, on the validation split only; "
        "test_total_return is shown for information and never used to choose",
        "config": str(args.config),
        "overrides": list(runner.base_overrides),
        "output_dir": str(runner.output_dir),
    }
    interrupted = False
    failed: list[Worker] = []
    try:
        if plan.backend.backend == "optuna":
            if args.workers > 1 and args.storage is None:
                args.storage = f"sqlite:///{runner.sweep_dir / 'study.db'}"  # the workers' shared study
            header.update(storage=args.storage, study_name=plan.name, workers=args.workers)
            study = open_study(spec, plan.name, args.storage, args.seed, args.heartbeat_s)
            budget = trial_budget(spec, args.count, len(study.trials))
            expected = estimate_duration(
                runner.base_overrides, preview(plan, budget, args.seed, len(study.trials)), runner.output_dir
            )
            print(format_duration(expected), file=sys.stderr, flush=True)
            log.info(
                "sweep_started",
                trials=budget,
                existing_trials=len(study.trials),
                storage=redacted(args.storage) if args.storage else None,
                expected_s=round(expected.seconds),
            )
            if budget == 0:
                log.warning("sweep_nothing_to_run", run_cap=spec.run_cap, existing_trials=len(study.trials))

            def save() -> None:
                write_results(runner.sweep_dir, header, rows_from_study(study), spec.metric, runner.base_overrides)

            counts = shares(budget, args.workers)
            others = start_workers(_worker_argv(args, plan), [c for c in counts[1:] if c], runner.sweep_dir)
            try:
                interrupted = run_optuna(spec, runner, study, counts[0], on_trial_end=save)
            except KeyboardInterrupt:
                interrupted = True
                stop_workers(others)
            except BaseException:
                stop_workers(others)
                raise
            failed = wait_workers(others)
            rows = rows_from_study(study)
        else:
            project = args.project or spec.raw.get("project") or os.environ.get("WANDB_PROJECT") or "ai-trading"
            entity = args.entity or spec.raw.get("entity") or os.environ.get("WANDB_ENTITY")
            header.update(project=project, entity=entity)

            def save_results(results: list[TrialResult]) -> None:
                rows = [r.attrs() for r in results]
                write_results(runner.sweep_dir, header, rows, spec.metric, runner.base_overrides)

            sweep_id, results = run_wandb(
                spec,
                runner,
                name=plan.name,
                project=project,
                entity=entity,
                count=args.count,
                sweep_id=args.sweep_id,
                on_trial_end=save_results,
            )
            header["sweep_id"] = sweep_id
            rows = [r.attrs() for r in results]
    except ConfigError as e:
        print_error(PROG, e)
        return EXIT_CONFIG
    summary = write_results(runner.sweep_dir, header, rows, spec.metric, runner.base_overrides)
    # Each trial's model card carries the study's PBO and its DSR, known only now that every trial is in.
    stamp_cards(summary, runner.sweep_dir)
    print(format_results(rows, spec.metric, summary))
    print(f"\nsweep summary: {runner.sweep_dir / SUMMARY_FILE}")
    if interrupted:
        return EXIT_INTERRUPTED
    if failed:
        logs = ", ".join(str(w.log_path) for w in failed)
        print_error(PROG, SweepError(f"{len(failed)} of {args.workers - 1} extra worker(s) failed; see {logs}"))
        return EXIT_ERROR
    return EXIT_OK if summary["best"] is not None or not rows else EXIT_ERROR


def _worker_argv(args: argparse.Namespace, plan: SweepPlan) -> list[str]:
    """The command line of one more worker of this sweep (its --count is added per worker)."""
    argv = ["--config", str(args.config), "--name", plan.name, "--backend", "optuna", "--storage", args.storage]
    argv += ["--output-dir", str(args.output_dir), "--seed", str(args.seed), "--heartbeat-s", str(args.heartbeat_s)]
    if args.log_level:
        argv += ["--log-level", args.log_level]
    threads = [o for o in plan.added_overrides if o.startswith(f"{THREADS_KEY}=")]
    return [*argv, *plan.user_overrides, *threads]


if __name__ == "__main__":
    raise SystemExit(main())
