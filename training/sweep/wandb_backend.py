"""The W&B sweep backend: `wandb.sweep` + `wandb.agent(function=...)` running trials in this process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from training.sweep.overrides import params_from_wandb_config
from training.sweep.spec import SweepSpec
from training.sweep.trial import TrialResult, TrialRunner

log = structlog.get_logger()


def make_wandb_trial(
    spec: SweepSpec, runner: TrialRunner, results: list[TrialResult], init: Callable[..., Any] | None = None
) -> Callable[[], None]:
    """The function `wandb.agent` calls per trial: read the run's config, train, publish the objective."""

    def trial() -> None:
        import wandb

        start = init if init is not None else wandb.init
        run = start(
            job_type="sweep-trial",
            dir=str(runner.sweep_dir),
            reinit="finish_previous",
            settings=wandb.Settings(x_disable_stats=True, console="off", silent=True),
        )
        params = params_from_wandb_config(spec, run.config.as_dict())

        def publish(iteration: int, value: float) -> bool:
            # The run summary carries the selected checkpoint's validation value (what the bayes search
            # optimises), not the last pass; W&B's hyperband stops runs from the server side.
            run.summary[spec.metric.name] = value
            return True

        results.append(runner.run(len(results), params, on_intermediate=publish, wandb_run=run))

    return trial


def run_wandb(
    spec: SweepSpec,
    runner: TrialRunner,
    *,
    name: str,
    project: str,
    entity: str | None,
    count: int | None,
    sweep_id: str | None,
    on_trial_end: Callable[[list[TrialResult]], None] | None = None,
) -> tuple[str, list[TrialResult]]:
    """Create (or join) a W&B sweep and run this process's agent; return the sweep id and its trials."""
    import wandb

    if sweep_id is None:
        sweep_id = wandb.sweep(sweep={**spec.raw, "name": name}, project=project, entity=entity)
        log.info("wandb_sweep_created", sweep_id=sweep_id, project=project, entity=entity)
    results: list[TrialResult] = []
    trial = make_wandb_trial(spec, runner, results)

    def trial_and_record() -> None:
        trial()
        if on_trial_end is not None:
            on_trial_end(results)

    wandb.agent(sweep_id, function=trial_and_record, count=count, project=project, entity=entity)
    return sweep_id, results
