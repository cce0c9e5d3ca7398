"""The local sweep backend: the sweep as an Optuna study (samplers, Hyperband pruning, resumable shared storage).

Reproducible and shareable: every sampler draws the parameters of trial N from a random state seeded by
(seed, N) only, so a dry run lists exactly what a real run will run, a resumed study never replays earlier
samples, and two workers on one storage (one PostgreSQL for several machines) never draw the same parameters
for different trials (the storage hands out distinct trial numbers). With a storage, workers send a heartbeat;
a trial whose worker died (killed, machine lost) is marked FAIL by the next worker that starts a trial, and the
study goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from monitoring.run_store import json_safe
from training.sweep.spec import SweepConfigError, SweepSpec
from training.sweep.trial import TrialRunner

log = structlog.get_logger()

DEFAULT_COUNT = 10
"""Trials a random/bayes sweep runs when neither --count nor run_cap says."""
CONSECUTIVE_FAILURES_LIMIT = 3
DEFAULT_SEED = 0
"""Sampler seed when --seed is not given: a sweep is reproducible by default."""
DEFAULT_HEARTBEAT_S = 30.0
"""Heartbeat of a trial in a storage; a trial silent for twice this long is taken for dead and failed."""


def trial_seed(seed: int, number: int) -> int:
    """The random seed of trial `number` of a sweep seeded with `seed`."""
    return (seed * 1_000_003 + number * 7_919 + 12_345) % 2**32


def _seed_for(sampler: Any, study: Any, trial: Any) -> None:
    sampler._rng.rng.seed(trial_seed(sampler.sweep_seed, trial.number + sampler.number_offset))


class _TrialFailed(Exception):
    """A trial failed (its error is in the trial's attributes); Optuna records FAIL and goes on."""


def trial_budget(spec: SweepSpec, count: int | None, existing: int) -> int:
    """How many trials this process runs: --count, else the rest of the grid, run_cap, or DEFAULT_COUNT."""
    if count is not None:
        budget = count
    elif spec.method == "grid":
        budget = max(0, spec.grid_size() - existing)
    elif spec.run_cap is not None:
        budget = spec.run_cap
    else:
        budget = DEFAULT_COUNT
        log.info("sweep_count_defaulted", count=DEFAULT_COUNT, note="give --count N or run_cap for more")
    if spec.run_cap is not None:
        budget = min(budget, max(0, spec.run_cap - existing))
    return budget


def sampler_for(spec: SweepSpec, seed: int | None, *, number_offset: int = 0, startup_only: bool = False) -> Any:
    """The Optuna sampler of the sweep method: grid → GridSampler, random → RandomSampler, bayes → TPESampler.

    Each is reseeded before every trial from (seed, trial number + `number_offset`); `startup_only` gives the
    random sampler bayes uses for its start-up trials (what a dry run can show of a bayes sweep).
    """
    import optuna

    base = DEFAULT_SEED if seed is None else seed
    offset = number_offset

    class NumberedRandom(optuna.samplers.RandomSampler):
        sweep_seed, number_offset = base, offset

        def before_trial(self, study: Any, trial: Any) -> None:
            _seed_for(self, study, trial)
            super().before_trial(study, trial)

    class NumberedGrid(optuna.samplers.GridSampler):
        sweep_seed, number_offset = base, offset

        def before_trial(self, study: Any, trial: Any) -> None:
            _seed_for(self, study, trial)
            super().before_trial(study, trial)

    class NumberedTpe(optuna.samplers.TPESampler):
        sweep_seed, number_offset = base, offset

        def before_trial(self, study: Any, trial: Any) -> None:
            _seed_for(self, study, trial)
            super().before_trial(study, trial)

    if spec.method == "grid":
        return NumberedGrid(spec.grid_space(), seed=base)
    if spec.method == "random" or startup_only:
        return NumberedRandom(seed=base)
    # constant_liar: parallel workers see each other's running trials, so they do not all propose one point.
    tpe = NumberedTpe(seed=base, constant_liar=True)
    tpe._random_sampler = NumberedRandom(seed=base)  # its start-up trials: the same draws a dry run shows
    return tpe


def storage_for(storage: str | None, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> Any:
    """The Optuna storage of a --storage URL: an RDB storage with heartbeats (None: in memory)."""
    if storage is None or storage == "sqlite:///:memory:":
        return None
    import optuna

    from bot.ledger.urls import sqlalchemy_url

    url = sqlalchemy_url(storage)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def abandoned(study: Any, trial: Any) -> None:
        log.warning(
            "sweep_trial_abandoned",
            trial=trial.number,
            reason=f"no heartbeat for {2 * heartbeat_s:g} s: its worker died; marked failed, the study goes on",
        )

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:"):
        # Workers on one machine (--workers) share a SQLite file: wait for the other's write instead of failing.
        engine_kwargs["connect_args"] = {"timeout": 60}
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=max(1, round(heartbeat_s)),
        grace_period=max(2, round(2 * heartbeat_s)),
        heartbeat_stale_trial_callback=abandoned,
    )


def existing_trials(spec: SweepSpec, name: str, storage: str | None) -> int:
    """How many trials the study `name` in `storage` already has (0 when either does not exist); writes nothing."""
    if storage is None or storage == "sqlite:///:memory:":
        return 0
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from bot.ledger.urls import sqlalchemy_url

    url = sqlalchemy_url(storage)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return 0
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return 0
    except (ValueError, ImportError, SQLAlchemyError, optuna.exceptions.OptunaError) as e:
        raise SweepConfigError(f"--storage: cannot read the study ({str(e).strip().splitlines()[0]})") from e
    return len(study.trials)


def open_study(
    spec: SweepSpec, name: str, storage: str | None, seed: int | None, heartbeat_s: float = DEFAULT_HEARTBEAT_S
) -> Any:
    """Create or resume the Optuna study; refuse to mix a different sweep config into an existing study."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pruner = spec.early_terminate.pruner() if spec.early_terminate else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(
            storage=storage_for(storage, heartbeat_s),
            study_name=name,
            direction=spec.metric.goal,
            pruner=pruner,
            sampler=sampler_for(spec, seed),
            load_if_exists=True,
        )
    except (ValueError, ImportError, SQLAlchemyError, optuna.exceptions.OptunaError) as e:
        from bot.ledger.urls import redacted

        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SweepConfigError(f"--storage {redacted(storage or '')}: cannot open the study ({first})") from e
    existing = study.user_attrs.get("sweep_fingerprint")
    if existing is not None and existing != spec.fingerprint():
        raise SweepConfigError(
            f"study {name!r} in {storage} was made from a different sweep config (method, metric, parameters or "
            f"early_terminate differ); use another --name, or the config it was made with"
        )
    if existing is None:
        study.set_user_attr("sweep_fingerprint", spec.fingerprint())
        study.set_user_attr("sweep_config", json_safe(spec.raw))
    fail_dead_trials(study)
    return study


def fail_dead_trials(study: Any) -> None:
    """Mark FAIL the running trials whose worker stopped sending heartbeats (optimize also does it per trial)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_optuna(
    spec: SweepSpec,
    runner: TrialRunner,
    study: Any,
    budget: int,
    on_trial_end: Callable[[], None] | None = None,
) -> bool:
    """Run `budget` trials of the study in this process; return whether the user interrupted a trial."""
    import optuna

    state = {"failures": 0, "interrupted": 0, "done": 0}
    started = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        params = spec.sample(trial)
        trial.set_user_attr("params", json_safe(params))

        def report(iteration: int, value: float) -> bool:
            trial.report(value, iteration)
            return not trial.should_prune()

        result = runner.run(trial.number, params, on_intermediate=report)
        for key, value in result.attrs().items():
            trial.set_user_attr(key, value)
        if result.state == "failed":
            raise _TrialFailed(result.error)
        if result.state in ("pruned", "interrupted"):
            state["interrupted"] += result.state == "interrupted"
            raise optuna.TrialPruned(result.error or result.state)
        assert result.value is not None
        return result.value

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state["done"] += 1
        state["failures"] = state["failures"] + 1 if trial.state == optuna.trial.TrialState.FAIL else 0
        elapsed = time.perf_counter() - started
        eta = elapsed / state["done"] * max(0, budget - state["done"])
        log.info("sweep_progress", done=state["done"], total=budget, elapsed_s=round(elapsed, 1), eta_s=round(eta, 1))
        if on_trial_end is not None:
            on_trial_end()
        if state["interrupted"]:
            log.warning("sweep_interrupted", note="stopping after the interrupted trial")
            study.stop()
        elif state["failures"] >= CONSECUTIVE_FAILURES_LIMIT:
            log.error("sweep_stopped", reason=f"{state['failures']} trials failed in a row; see sweep_trial_failed")
            study.stop()
        elif (
            spec.metric.target is not None
            and trial.state == optuna.trial.TrialState.COMPLETE
            and trial.value is not None
            and not spec.metric.better(spec.metric.target, trial.value)
        ):
            log.info("sweep_target_reached", trial=trial.number, value=trial.value, target=spec.metric.target)
            study.stop()

    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [after_trial]
    if spec.run_cap is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(spec.run_cap, states=None))
    if budget > 0:
        from monitoring.progress import Progress

        # A bar with rate and ETA on a terminal, a few log lines elsewhere (the trials' own bars are off).
        with Progress(budget, desc="sweep", unit="trial", event="sweep_progress") as progress:
            callbacks.append(lambda study, trial: progress.update())
            study.optimize(objective, n_trials=budget, catch=(_TrialFailed,), callbacks=callbacks)
    fail_dead_trials(study)
    return state["interrupted"] > 0


def rows_from_study(study: Any) -> list[dict[str, Any]]:
    """One row per trial of the study (all sessions and workers), as TrialResult fields."""
    from optuna.trial import TrialState

    rows = []
    for t in study.trials:
        attrs = dict(t.user_attrs)
        finished = t.state.is_finished()
        row = {
            "number": t.number,
            "params": attrs.get("params", {}),
            "state": attrs.get("state", t.state.name.lower()) if finished else t.state.name.lower(),
            "value": t.value if t.state == TrialState.COMPLETE else attrs.get("value"),
            "test_total_return": attrs.get("test_total_return"),
            "run_id": attrs.get("run_id"),
            "run_dir": attrs.get("run_dir"),
            "seconds": attrs.get("seconds"),
            "error": attrs.get("error"),
            "intermediate": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
        }
        rows.append(json_safe(row))
    return rows
