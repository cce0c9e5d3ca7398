"""What users wait for: `ai-trading train` end to end for each model preset, against Stable-Baselines3.

For each preset (``mlp``, ``transformer_small``, ``_medium``, ``_large``) a fresh process runs
`training.train.main` (what ``ai-trading train`` runs: data load, features, env, PPO, validation passes,
test evaluation, ONNX export with its parity check) at ``--steps`` environment steps with the default
config otherwise, outputs in a temporary directory. Reported per preset:

- ``frames_per_second``: PPO frames/s (steps / (rollout + update seconds)), the figure the targets use;
  ``end_to_end_frames_per_second``: steps / the process's whole wall-clock (imports and all).
- ``seconds`` and ``share``: the wall-clock split into rollout, update, validation passes, test evaluation,
  export (with parity) and the rest (interpreter start, imports, data, features, env, writing the run).
- ``peak_rss_mib``: the process's peak resident memory.
- ``sb3``: the same PPO settings through Stable-Baselines3 2.x in its own process, on the same train split
  (a `DummyVecEnv` of our `TradingEnv`, which SB3 can step; our PPO steps `TradingVectorEnv`), with an
  equivalent policy: the same 64-64 tanh actor and critic MLPs, or the same transformer (same layers and
  initialisation, run by ``nn.TransformerEncoder``'s own forward as a user would write it; ``--sb3-encoder
  ours`` runs our forward instead, isolating the PPO loop). ``ratio`` = our frames/s / SB3's (target ≥ 1.5).

Both sides use the same torch thread count (``training.torch_threads``, default auto = usable cores), the
same OpenMP wait settings (those `import training` picks from what else runs when the benchmark starts,
reported as ``openmp``: brief spinning on an idle machine, sleeping on a busy one) and the CPU
(``--device``, default cpu; ``auto`` measures ours on CUDA where present, SB3 stays on the CPU).
The load average before and after is reported: on a shared machine absolute figures move with the load,
the ratio much less (both sides run in the same invocation).

``--precision bf16`` trains ours with ``training.ppo.precision=bf16`` (the transformer's encoder in bfloat16; SB3,
which has no such setting, stays float32, and the record says so).

Run: ``python tests/benchmarks/train_presets.py [--steps 8192] [--presets mlp transformer_small ...]``;
prints one JSON line on stdout and exits 1 unless the targets are met.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PRESETS = ("mlp", "transformer_small", "transformer_medium", "transformer_large")
TARGET_FPS = {"mlp": 60_000, "transformer_small": 2_700}
TARGET_RATIO = 1.5
ROOT = Path(__file__).resolve().parents[2]


def _overrides(preset: str, steps: int, out: Path, device: str, threads: str) -> list[str]:
    return [
        f"model={preset}",
        f"training.total_timesteps={steps}",
        f"training.device={device}",
        f"training.torch_threads={threads}",
        f"output_dir={out / 'outputs'}",
        f"training.export_dir={out / 'models'}",
        "training.progress=false",
        "wandb.enabled=false",
        "log_level=WARNING",
    ]


def _peak_rss_mib() -> float:
    """This process's own peak RSS: VmHWM of its address space (getrusage's ru_maxrss survives exec, so a child
    would report its parent's RSS at the fork when that was larger)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # no /proc: the closest there is


# --- child processes ---------------------------------------------------------------------------------------


def child_ours(overrides: list[str]) -> dict[str, Any]:
    """Run `ai-trading train` in this process; return its summary's timings and the peak RSS."""
    import contextlib
    import io

    from training.train import main

    with contextlib.redirect_stdout(io.StringIO()):  # the results table; stdout carries our JSON line
        code = main(overrides)
    if code != 0:
        raise SystemExit(f"ai-trading train exited {code}")
    output_dir = Path(next(o for o in overrides if o.startswith("output_dir=")).split("=", 1)[1])
    summary = json.loads(next(output_dir.glob("*/summary.json")).read_text())
    return {"timings": summary["timings"], "peak_rss_mib": _peak_rss_mib()}


def child_sb3(overrides: list[str], encoder: str) -> dict[str, Any]:
    """Train SB3 PPO with the run's settings on its train split; return frames/s and the peak RSS."""
    import numpy as np
    import torch
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv
    from torch import nn

    from bot.model.features import FeatureSpec
    from monitoring.logging import configure_logging
    from training.env import MarketData, TradingEnv
    from training.models import WindowTransformer
    from training.ppo import resolve_torch_threads
    from training.train import _splits, load_dataset, load_train_config

    cfg = load_train_config(overrides)
    configure_logging("WARNING")
    tcfg, mcfg = cfg.training.ppo, cfg.model
    torch.set_num_threads(resolve_torch_threads(tcfg.torch_threads))
    dataset = load_dataset(cfg.data)
    _, split = _splits(cfg, dataset.frame)[0]
    market = MarketData(split.train.take(dataset.frame), FeatureSpec(window=cfg.env.window))
    spec = market.spec

    def make() -> TradingEnv:
        return TradingEnv(config=cfg.env, costs=cfg.costs, market=market)

    env = DummyVecEnv([make for _ in range(tcfg.num_envs)])
    n_window = spec.window * spec.n_features

    class WindowFeatures(BaseFeaturesExtractor):  # type: ignore[misc]
        """Our transformer body as an SB3 features extractor (the heads are SB3's, as wide as ours)."""

        def __init__(self, observation_space: Any) -> None:
            super().__init__(observation_space, features_dim=mcfg.d_model)
            n_state = int(np.prod(observation_space.shape)) - n_window
            self.body = WindowTransformer(spec.window, spec.n_features, n_state, mcfg)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            body = self.body
            if encoder == "ours":
                return body(obs)  # type: ignore[no-any-return]
            tokens = obs[:, :n_window].reshape(-1, spec.window, spec.n_features)
            latest = body.norm(body.encoder(body.embed(tokens) + body.position)[:, -1])
            return body.project(torch.cat([latest, obs[:, n_window:]], dim=1))  # type: ignore[no-any-return]

    if mcfg.name == "mlp":
        activation = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}[mcfg.activation]
        policy_kwargs: dict[str, Any] = {
            "net_arch": {"pi": list(mcfg.hidden_sizes), "vf": list(mcfg.hidden_sizes)},
            "activation_fn": activation,
        }
    else:
        policy_kwargs = {
            "features_extractor_class": WindowFeatures,
            "net_arch": {"pi": [], "vf": []},
            "share_features_extractor": True,
            "ortho_init": False,
        }
    lr = tcfg.learning_rate
    model = SB3PPO(
        "MlpPolicy",
        env,
        learning_rate=(lambda remaining: remaining * lr) if tcfg.anneal_lr else lr,
        n_steps=tcfg.num_steps,
        batch_size=tcfg.num_envs * tcfg.num_steps // tcfg.num_minibatches,
        n_epochs=tcfg.update_epochs,
        gamma=tcfg.gamma,
        gae_lambda=tcfg.gae_lambda,
        clip_range=tcfg.clip_coef,
        clip_range_vf=tcfg.clip_coef if tcfg.clip_vloss else None,
        normalize_advantage=tcfg.norm_adv,
        ent_coef=tcfg.ent_coef,
        vf_coef=tcfg.vf_coef,
        max_grad_norm=tcfg.max_grad_norm,
        target_kl=tcfg.target_kl,
        policy_kwargs=policy_kwargs,
        seed=cfg.seed,
        device="cpu",
        verbose=0,
    )
    started = time.perf_counter()
    model.learn(tcfg.total_timesteps)
    elapsed = time.perf_counter() - started
    return {
        "frames_per_second": round(model.num_timesteps / elapsed),
        "frames": model.num_timesteps,
        "learn_seconds": round(elapsed, 2),
        "encoder": encoder if mcfg.name != "mlp" else None,
        "parameters": sum(p.numel() for p in model.policy.parameters()),
        "peak_rss_mib": _peak_rss_mib(),
    }


# --- the parent --------------------------------------------------------------------------------------------


def _spawn(args: list[str]) -> tuple[dict[str, Any], float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # Both sides inherit the OpenMP wait settings `import training` chose once, in this process, at start.
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def measure(
    preset: str, steps: int, device: str, threads: str, sb3: bool, encoder: str, precision: str = "fp32"
) -> dict[str, Any]:
    """Time one preset end to end (ours) and through SB3; return its JSON record."""
    with tempfile.TemporaryDirectory(prefix="train-presets-") as tmp:
        overrides = [*_overrides(preset, steps, Path(tmp), device, threads), f"training.ppo.precision={precision}"]
        ours, wall = _spawn(["--child", "ours", "--", *overrides])
    t = ours["timings"]
    seconds = {
        "rollout": t["rollout_seconds"],
        "update": t["update_seconds"],
        "validation": t["validation_seconds"],
        "test": t["test_seconds"],
        "export": t["export_seconds"],
    }
    seconds["other"] = wall - sum(seconds.values())
    ppo_seconds = t["rollout_seconds"] + t["update_seconds"]
    record: dict[str, Any] = {
        "preset": preset,
        "frames": t["global_step"],
        "device": t["device"],
        "torch_threads": t["torch_threads"],
        "precision": t["precision"],
        "frames_per_second": round(t["global_step"] / ppo_seconds),
        "end_to_end_frames_per_second": round(t["global_step"] / wall),
        "wall_seconds": round(wall, 2),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "share": {k: round(v / wall, 3) for k, v in seconds.items()},
        "peak_rss_mib": ours["peak_rss_mib"],
    }
    if sb3:
        with tempfile.TemporaryDirectory(prefix="train-presets-sb3-") as tmp:
            overrides = _overrides(preset, steps, Path(tmp), "cpu", threads)
            theirs, _ = _spawn(["--child", "sb3", "--encoder", encoder, "--", *overrides])
        record["sb3"] = {**theirs, "precision": "fp32"}  # SB3 has no bfloat16 setting: its ratio is to float32
        record["ratio"] = round(record["frames_per_second"] / theirs["frames_per_second"], 2)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the presets, print one JSON line, return 0 if the targets are met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8192, help="environment steps per run (default 8192)")
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="our PPO's device")
    parser.add_argument("--threads", default="auto", help="training.torch_threads for both sides")
    parser.add_argument("--no-sb3", action="store_true", help="skip the Stable-Baselines3 runs")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="training.ppo.precision of ours (SB3: fp32)"
    )
    parser.add_argument("--sb3-encoder", choices=("stock", "ours"), default="stock")
    parser.add_argument("--child", choices=("ours", "sb3"), help=argparse.SUPPRESS)
    parser.add_argument("--encoder", default="stock", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "ours":
        print(json.dumps(child_ours(args.overrides)))
        return 0
    if args.child == "sb3":
        print(json.dumps(child_sb3(args.overrides, args.encoder)))
        return 0

    load_before = os.getloadavg()
    import training  # noqa: F401  (its OpenMP wait settings, chosen from what runs now, go to every child)

    started = time.perf_counter()
    results = []
    for preset in args.presets:
        results.append(
            measure(preset, args.steps, args.device, args.threads, not args.no_sb3, args.sb3_encoder, args.precision)
        )
        print(json.dumps(results[-1]), file=sys.stderr)  # progress: each preset as it finishes
    checks = []
    for r in results:
        if r["preset"] in TARGET_FPS:
            checks.append(r["frames_per_second"] >= TARGET_FPS[r["preset"]])
        if "ratio" in r:
            checks.append(r["ratio"] >= TARGET_RATIO)
    out = {
        "benchmark": "train_presets",
        "steps": args.steps,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "openmp": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
        "targets": {"frames_per_second": TARGET_FPS, "ratio": TARGET_RATIO},
        "presets": results,
        "passed": all(checks),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out))
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
