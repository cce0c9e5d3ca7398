"""`ai-trading doctor` / `python -m monitoring.doctor`: check what the daemon needs before starting it.

    ai-trading doctor [--json] [--timeout-s 10] [KEY=VALUE ...]      (the daemon's own overrides)

It composes the same Hydra config as ``ai-trading bot`` (same overrides, same ``mode=`` shorthands) and checks,
one line each, what is wrong and how to fix it:

- config: composes and validates (an unknown key or a wrong type is named);
- model: the ONNX file and its card exist, the card parses, its sha256 matches, its feature spec is computable;
- ledger: the database opens, is writable, is in WAL mode (SQLite) and its schema is not newer than this code;
- exchange: ``load_markets`` answers, and with API keys ``fetch_balance`` too (never an order);
- mqtt: the broker accepts a connection with the configured credentials/TLS (when ``mqtt.enabled``);
- metrics: the Prometheus port can be bound (when ``metrics.enabled``);
- wandb: the W&B server is usable, or the runs are written offline (when ``wandb.enabled``).

Exit status: 0 when nothing failed (skipped checks are fine), 1 when a check failed, 2 on bad usage. ``--json``
prints ``{"ok": ..., "checks": [...]}`` on stdout for scripts. Torch-free: it imports only `adapters`, `bot`
and `monitoring` (DESIGN.md), so it runs where the daemon runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

from bot.app_config import BotAppConfig
from bot.config import load_config
from bot.errors import ConfigError

Status = Literal["ok", "fail", "skip"]
PROG = "ai-trading doctor"


@dataclass(frozen=True)
class Check:
    """One check's result: what was checked, how it went, and what to do about it."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        """Return the check as one line of text."""
        mark = {"ok": "ok  ", "fail": "FAIL", "skip": "skip"}[self.status]
        text = f"{mark}  {self.name:<9} {self.detail}"
        return f"{text} -> {self.fix}" if self.fix else text


def ok(name: str, detail: str) -> Check:
    """Return a passed check."""
    return Check(name, "ok", detail)


def fail(name: str, detail: str, fix: str) -> Check:
    """Return a failed check with its fix."""
    return Check(name, "fail", detail, fix)


def skip(name: str, detail: str) -> Check:
    """Return a check that does not apply to this config."""
    return Check(name, "skip", detail)


# --- checks --------------------------------------------------------------------------------------------------


def check_model(cfg: BotAppConfig) -> Check:
    """Check the model file, its card, the card's sha256 and feature spec, as the daemon does at start."""
    from bot.model.card import ModelCard, ModelCardError, card_path_for, check_feature_spec

    ref = cfg.bot.model_path
    if ref.startswith("wandb:"):
        return skip("model", f"{ref} is a W&B artifact: it is fetched and checked when the daemon starts")
    path = Path(ref)
    fix = "train one (ai-trading train training.publish=true) or point bot.model_path=... at an exported .onnx"
    if not path.is_file():
        return fail("model", f"{path}: no such file", fix)
    card_path = card_path_for(path)
    if not card_path.is_file():
        return fail("model", f"{path}: its model card {card_path} is missing", "export the model again: " + fix)
    try:
        card = ModelCard.load(card_path)
        card.verify_onnx(path)
        check_feature_spec(card)
    except (ModelCardError, OSError) as e:
        return fail("model", f"{path}: {e}", "export the model again (ai-trading train) or pick another")
    run = card.to_dict().get("training", {}).get("run_id")
    return ok("model", f"{path} (card ok, sha256 {str(card.onnx_sha256)[:12]}, from run {run or '?'})")


def check_shadow_models(cfg: BotAppConfig) -> Check:
    """Load bot.shadow_models as the daemon does at start (cards, names, timeframe); skip when there are none."""
    from bot.errors import BotError
    from bot.model.card import ModelCardError
    from bot.startup import load_policy, load_shadows
    from bot.wiring import timeframe_of

    refs = cfg.bot.shadow_models
    if not refs:
        return skip("shadow models", "none (bot.shadow_models is empty)")
    if any(ref.startswith("wandb:") for ref in refs) or cfg.bot.model_path.startswith("wandb:"):
        return skip("shadow models", "W&B artifacts among them: fetched and checked when the daemon starts")
    try:
        live = load_policy(cfg)
    except (BotError, ModelCardError, OSError):
        return skip("shadow models", "the live model does not load (see model): shadows are checked against it")
    try:
        shadows = load_shadows(cfg, live, timeframe=timeframe_of(cfg))
    except BotError as e:
        return fail("shadow models", str(e), "fix or remove the entry of bot.shadow_models it names")
    names = ", ".join(f"{name} ({policy.sha256[:12]})" for name, policy in shadows)
    return ok("shadow models", names)


def _sqlite_file(url: str) -> Path | None:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def check_ledger(cfg: BotAppConfig) -> Check:
    """Check that the ledger opens, is writable, runs in WAL mode and has a schema this code knows."""
    from bot.ledger.schema import SCHEMA_VERSION, current_version, default_ledger_url

    mode = cfg.bot.mode
    if mode == "backtest" and not cfg.bot.ledger_url:
        return skip("ledger", "a backtest keeps its ledger in memory (set bot.ledger_url=... to keep one)")
    url = cfg.bot.ledger_url or default_ledger_url(mode, cfg.bot.ledger_dir)
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    path = _sqlite_file(url)
    if path is not None:
        if not path.exists():
            parent = next((p for p in path.parents if p.exists()), Path("/"))
            if not os.access(parent, os.W_OK):
                return fail("ledger", f"{path} does not exist and {parent} is not writable", "set bot.ledger_dir=...")
            return ok("ledger", f"{path} will be created (WAL) on the daemon's first start")
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            return fail(
                "ledger",
                f"{path} (or its directory, which holds the WAL file) is not writable",
                f"fix the permissions of {path.parent} for the daemon's user",
            )
        try:
            with sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=5) as conn:
                journal = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                conn.execute("BEGIN IMMEDIATE")  # takes the write lock, writes nothing
                conn.rollback()
        except sqlite3.Error as e:
            return fail("ledger", f"{path}: {e}", "is it a SQLite file? move it away to start a fresh ledger")
        if journal != "wal":
            return fail("ledger", f"{path}: journal mode {journal}, not WAL", "open it once with the daemon")
    engine = sa.create_engine(url)
    try:
        version = current_version(engine)
    except sa.exc.SQLAlchemyError as e:
        return fail("ledger", f"{shown}: cannot connect: {e}", "check bot.ledger_url (server, user, password)")
    finally:
        engine.dispose()
    if version > SCHEMA_VERSION:
        return fail(
            "ledger", f"{shown}: schema version {version} is newer than this code's {SCHEMA_VERSION}", "upgrade"
        )
    state = "current" if version == SCHEMA_VERSION else f"{version}, migrated to {SCHEMA_VERSION} at start"
    return ok("ledger", f"{shown} (writable, {'WAL, ' if path else ''}schema {state})")


async def check_exchange(cfg: BotAppConfig, env: Mapping[str, str], timeout_s: float) -> Check:
    """Check that the exchange answers `load_markets`, and `fetch_balance` when keys are configured."""
    from adapters.ccxt.adapter import CcxtAdapter
    from adapters.errors import FatalError
    from adapters.secrets import env_names, load_credentials
    from bot.wiring import ccxt_config_of

    if cfg.bot.mode == "backtest":
        return skip("exchange", "a backtest replays candles from a file (data.path)")
    exchange = cfg.exchange.exchange_id
    names = env_names(exchange)
    secrets = Path(cfg.exchange.secrets_file) if cfg.exchange.secrets_file else None
    try:
        credentials = load_credentials(exchange, env=env, secrets_file=secrets, required=cfg.bot.mode == "live")
    except FatalError as e:
        keys = " and ".join(names.values())
        return fail("exchange", f"mode={cfg.bot.mode}: {e}", f"set {keys} (or exchange.secrets_file=...)")
    where = cfg.exchange.api_url_override or ("sandbox" if cfg.exchange.sandbox else "production")
    try:
        async with asyncio.timeout(timeout_s):
            async with CcxtAdapter(ccxt_config_of(cfg), credentials) as venue:
                markets = len(await venue.load_markets())
                if credentials is None:
                    return ok("exchange", f"{exchange} ({where}): {markets} markets; no API keys (paper needs none)")
                balances = await venue.fetch_balances()
    except TimeoutError:
        return fail("exchange", f"{exchange} ({where}): no answer in {timeout_s:g} s", "check the network/proxy")
    except Exception as e:  # whatever ccxt or the network raises is the finding
        fix = "check the API key, secret and their permissions" if credentials is not None else "check the network"
        return fail("exchange", f"{exchange} ({where}): {type(e).__name__}: {e}", fix)
    held = sorted(c for c, b in balances.items() if getattr(b, "total", 0))
    return ok(
        "exchange",
        f"{exchange} ({where}): {markets} markets; keys from {credentials.source} accepted "
        f"(fetch_balance: {len(held)} currencies held)",
    )


async def check_mqtt(cfg: BotAppConfig, env: Mapping[str, str], timeout_s: float) -> Check:
    """Connect to the broker with the daemon's credentials and TLS settings, then disconnect."""
    if not cfg.mqtt.enabled:
        return skip("mqtt", "mqtt.enabled=false")
    import aiomqtt

    from bot.sinks.mqtt import MqttConfigError, resolve_password, tls_context

    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    try:
        password = resolve_password(cfg.mqtt, env)
        tls = tls_context(cfg.mqtt.tls)
    except (MqttConfigError, OSError, ValueError) as e:
        return fail("mqtt", f"{where}: {e}", "fix mqtt.password_file / mqtt.tls.* (or AI_TRADING_MQTT_PASSWORD)")
    try:
        async with asyncio.timeout(timeout_s):
            async with aiomqtt.Client(
                cfg.mqtt.host, cfg.mqtt.port, username=cfg.mqtt.username, password=password, tls_context=tls
            ):
                pass
    except TimeoutError:
        return fail("mqtt", f"{where}: no answer in {timeout_s:g} s", "is the broker running? check mqtt.host")
    except aiomqtt.MqttError as e:
        fix = "check mqtt.username and the password" if "auth" in str(e).lower() else "is the broker running?"
        return fail("mqtt", f"{where}: {e}", f"{fix} (mqtt.host, mqtt.port)")
    return ok("mqtt", f"{where} accepted the connection" + (f" as {cfg.mqtt.username}" if cfg.mqtt.username else ""))


def check_metrics(cfg: BotAppConfig) -> Check:
    """Check that the Prometheus exporter's address can be bound."""
    if not cfg.metrics.enabled:
        return skip("metrics", "metrics.enabled=false")
    where = f"{cfg.metrics.host}:{cfg.metrics.port}"
    try:
        with socket.socket(socket.AF_INET6 if ":" in cfg.metrics.host else socket.AF_INET) as sock:
            sock.bind((cfg.metrics.host, cfg.metrics.port))
    except OSError as e:
        return fail("metrics", f"{where}: cannot bind: {e.strerror}", "stop what uses it or set metrics.port=...")
    return ok("metrics", f"{where} is free for the Prometheus exporter")


def check_wandb(cfg: BotAppConfig, env: Mapping[str, str]) -> Check:
    """Check that W&B can take the daemon's run: a usable server, or offline mode (synced later)."""
    from monitoring.wandb_server import server_status

    if not cfg.wandb.enabled:
        return skip("wandb", "wandb.enabled=false")
    if cfg.wandb.mode != "online":
        return ok("wandb", f"wandb.mode={cfg.wandb.mode}: runs are written offline (wandb sync them later)")
    usable, why = server_status(env)
    if not usable:
        return fail("wandb", why, "set WANDB_API_KEY / WANDB_BASE_URL, or wandb.mode=offline")
    return ok("wandb", why)


async def run_checks(cfg: BotAppConfig, env: Mapping[str, str], timeout_s: float = 10.0) -> list[Check]:
    """Run every check of `cfg` (after the config itself, which composed) and return them in order."""
    checks = [check_model(cfg), *([check_shadow_models(cfg)] if cfg.bot.shadow_models else []), check_ledger(cfg)]
    checks.append(await check_exchange(cfg, env, timeout_s))
    checks.append(await check_mqtt(cfg, env, timeout_s))
    checks += [check_metrics(cfg), check_wandb(cfg, env)]
    return checks


# --- command line --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser: --json, --timeout-s and the daemon's KEY=VALUE overrides."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Check the daemon's config, model, ledger, exchange, MQTT broker, metrics port and W&B "
        "without trading: one line per check saying what is wrong and how to fix it.",
        epilog="Examples:\n  ai-trading doctor\n  ai-trading doctor mode=live exchange.sandbox=true\n"
        "  ai-trading doctor --json mqtt.enabled=true mqtt.host=broker.lan\n\n"
        "Exit status: 0 nothing failed, 1 a check failed, 2 bad usage.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="the daemon's overrides (ai-trading bot)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON on stdout")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="deadline of each network check (default 10)")
    return parser


def _report(checks: Sequence[Check], as_json: bool) -> int:
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        sys.stdout.write(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2) + "\n")
    else:
        verdict = "doctor: " + ("some checks FAILED" if failed else "all checks passed")
        sys.stdout.write("".join(check.line() + "\n" for check in checks) + verdict + "\n")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; return 0 when none failed, 1 when one did, 2 on bad usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    bad = [a for a in args.overrides if "=" not in a]
    if bad:
        sys.stderr.write(f"{PROG}: expected KEY=VALUE overrides, got {bad[0]!r}\n")
        return 2
    from bot.__main__ import normalise_overrides
    from monitoring.logging import configure_logging

    # Quiet: the checks' own findings are the output; libraries' warnings still go to stderr.
    configure_logging("ERROR", stream=sys.stderr)
    try:
        cfg = load_config(BotAppConfig, normalise_overrides(args.overrides))
    except ConfigError as e:
        return _report([fail("config", str(e), "fix the override or config/*.yaml (ai-trading bot --help)")], args.json)
    summary = f"mode={cfg.bot.mode}, exchange {cfg.exchange.exchange_id}, model {cfg.bot.model_path}"
    checks = [ok("config", summary)] + asyncio.run(run_checks(cfg, os.environ, args.timeout_s))
    return _report(checks, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
