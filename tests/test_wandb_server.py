"""monitoring.wandb_server: whether a W&B server can be used, decided at once and said in words."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from bot.__main__ import main as bot_main
from monitoring.wandb_server import credentials_source, server_status
from tests.support.services import free_port


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, "WANDB_MODE=offline"),
        ({"WANDB_DISABLED": "true", "WANDB_API_KEY": "k" * 40}, "WANDB_DISABLED is set"),
        ({"WANDB_BASE_URL": "not a url"}, "names no host"),
    ],
)
def test_switched_off_or_misconfigured_w_and_b_is_ruled_out_with_the_reason(env: dict[str, str], reason: str) -> None:
    usable, why = server_status(env)
    assert not usable and reason in why


def test_no_credentials_are_named_as_the_reason(tmp_path: Path) -> None:
    usable, why = server_status({"NETRC": str(tmp_path / "absent"), "HOME": str(tmp_path)})
    assert not usable and "no W&B credentials for api.wandb.ai" in why


def test_a_netrc_entry_for_the_configured_host_counts_as_credentials(tmp_path: Path) -> None:
    rc = tmp_path / "netrc"
    rc.write_text("machine 127.0.0.1\n  login user\n  password " + "p" * 40 + "\n")
    rc.chmod(0o600)
    env = {"NETRC": str(rc), "WANDB_BASE_URL": "http://127.0.0.1:1"}
    assert credentials_source(env) == str(rc)
    assert credentials_source({**env, "WANDB_BASE_URL": "http://other.example:1"}) is None


def test_an_unreachable_server_is_reported_without_waiting_on_the_w_and_b_client() -> None:
    port = free_port()  # nobody listens there
    started = time.perf_counter()
    usable, why = server_status({"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{port}"})
    assert not usable and f"127.0.0.1:{port} did not answer" in why
    assert time.perf_counter() - started < 2.5, "a refused connection must not wait for the timeout"


def test_a_listening_server_with_credentials_is_usable() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        usable, why = server_status({"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{port}"})
    assert usable and "credentials come from WANDB_API_KEY" in why


def test_the_daemon_refuses_a_w_and_b_model_reference_at_once_when_there_is_no_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # conftest keeps W&B offline in every test: the daemon must say so instead of starting a W&B client.
    assert bot_main(["mode=backtest", "bot.model_path=wandb:me/ai-trading/onnx-model:best"]) == 1
    err = capsys.readouterr().err
    assert "needs a W&B server: WANDB_MODE=offline" in err and "bot.model_path" in err
