"""Actor-critic networks: presets, action distributions, the transformer's reshape, ONNX-exportable policy head."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from adapters.costs import CostModel
from training.models import (
    PRESETS,
    ActorCritic,
    DeterministicActor,
    ModelConfig,
    PolicyModule,
    WindowTransformer,
    build_actor_critic,
    layer_init,
    preset,
    sample_categorical,
)

WINDOW, N_FEATURES, N_STATE = 8, 5, 3
OBS_DIM = WINDOW * N_FEATURES + N_STATE
TINY_TRANSFORMER = ModelConfig(name="transformer", d_model=16, n_layers=1, n_heads=2)


def transformer(action_space: gym.spaces.Space, config: ModelConfig = TINY_TRANSFORMER) -> ActorCritic:  # type: ignore[type-arg]
    torch.manual_seed(0)
    return build_actor_critic(OBS_DIM, action_space, config, window=WINDOW, n_features=N_FEATURES).eval()


def test_presets_are_the_documented_defaults() -> None:
    assert PRESETS["mlp"].name == "mlp"
    assert PRESETS["mlp"].hidden_sizes == (64, 64)
    sizes = {name: (c.d_model, c.n_layers, c.n_heads) for name, c in PRESETS.items() if c.name == "transformer"}
    assert sizes == {
        "transformer_small": (64, 2, 4),
        "transformer_medium": (128, 3, 4),
        "transformer_large": (256, 4, 8),
    }
    assert preset("transformer_small") is PRESETS["transformer_small"]
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset("huge")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "cnn"}, "model name"),
        ({"d_model": 30, "n_heads": 4}, "n_heads \\(4\\) must divide d_model \\(30\\)"),
        ({"dropout": 1.0}, "dropout"),
        ({"activation": "swish"}, "activation"),
        ({"hidden_sizes": (64, 0)}, "hidden_sizes"),
    ],
)
def test_model_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


def test_layer_init_is_orthogonal_with_gain() -> None:
    layer = layer_init(nn.Linear(6, 6), std=2.0, bias=0.5)
    torch.testing.assert_close(layer.weight @ layer.weight.T, 4.0 * torch.eye(6), atol=1e-5, rtol=0)
    assert torch.all(layer.bias == 0.5)


def test_discrete_mlp_matches_categorical_distribution() -> None:
    torch.manual_seed(0)
    model = build_actor_critic(4, gym.spaces.Discrete(3), PRESETS["mlp"])
    # Untrained heads output near-uniform logits; make them informative.
    nn.init.normal_(model.actor_head.weight, std=1.0)
    obs = torch.randn(7, 4)
    action, log_prob, entropy, value = model.get_action_and_value(obs)
    assert action.shape == log_prob.shape == entropy.shape == value.shape == (7,)
    reference = torch.distributions.Categorical(logits=model.policy_outputs(obs))
    torch.testing.assert_close(log_prob, reference.log_prob(action))  # type: ignore[no-untyped-call]
    torch.testing.assert_close(entropy, reference.entropy())  # type: ignore[no-untyped-call]
    torch.testing.assert_close(value, model.value(obs))
    assert torch.equal(model.deterministic_action(obs), model.policy_outputs(obs).argmax(-1))
    # Scoring a given action returns that action and its log-probability.
    given = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    scored, scored_log_prob, _, _ = model.get_action_and_value(obs, given)
    assert torch.equal(scored, given)
    torch.testing.assert_close(scored_log_prob, reference.log_prob(given))  # type: ignore[no-untyped-call]


def test_gaussian_head_matches_normal_distribution() -> None:
    torch.manual_seed(0)
    space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    model = build_actor_critic(4, space, ModelConfig(init_log_std=-0.5))
    obs = torch.randn(5, 4)
    action, log_prob, entropy, _ = model.get_action_and_value(obs)
    assert action.shape == (5, 2)
    mean = model.policy_outputs(obs)
    reference = torch.distributions.Normal(mean, torch.full_like(mean, math.exp(-0.5)))
    torch.testing.assert_close(log_prob, reference.log_prob(action).sum(-1))  # type: ignore[no-untyped-call]
    torch.testing.assert_close(entropy, reference.entropy().sum(-1))  # type: ignore[no-untyped-call]
    assert torch.equal(model.deterministic_action(obs), mean)
    # The standard deviation is a parameter, not a function of the observation.
    assert model.log_std is not None and model.log_std.shape == (1, 2)


def test_sample_categorical_follows_the_probabilities() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([0.2, 0.5, 0.3])
    samples = sample_categorical(probs.log().expand(20_000, 3))
    frequencies = torch.bincount(samples, minlength=3).float() / samples.numel()
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)


def test_transformer_reads_window_and_state_features() -> None:
    model = transformer(gym.spaces.Discrete(2))
    obs = torch.randn(3, OBS_DIM)
    params, value = model(obs)
    assert params.shape == (3, 2) and value.shape == (3,)
    changed_state = obs.clone()
    changed_state[:, -N_STATE:] += 1.0
    changed_oldest_bar = obs.clone()
    changed_oldest_bar[:, :N_FEATURES] += 1.0
    with torch.no_grad():
        base = model.value(obs)
        assert not torch.allclose(model.value(changed_state), base)
        assert not torch.allclose(model.value(changed_oldest_bar), base)
    # Swapping two bars changes the output: positions are encoded.
    swapped = obs.view(3, -1)[:, : WINDOW * N_FEATURES].reshape(3, WINDOW, N_FEATURES)[:, [1, 0, *range(2, WINDOW)]]
    swapped_obs = torch.cat([swapped.reshape(3, -1), obs[:, -N_STATE:]], dim=1)
    with torch.no_grad():
        assert not torch.allclose(model.value(swapped_obs), base)


def test_transformer_shares_one_encoder_and_is_deterministic_in_eval() -> None:
    model = transformer(
        gym.spaces.Discrete(2), ModelConfig(name="transformer", d_model=16, n_layers=1, n_heads=2, dropout=0.5)
    )
    assert model.critic_body is None
    obs = torch.randn(4, OBS_DIM)
    with torch.no_grad():
        torch.testing.assert_close(model.policy_outputs(obs), model.policy_outputs(obs))


@pytest.mark.parametrize(
    ("window", "n_features", "message"),
    [(None, N_FEATURES, "needs window and n_features"), (WINDOW, N_FEATURES + 1, "must be positive and fit")],
)
def test_transformer_rejects_shapes_that_do_not_fit(window: int | None, n_features: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_actor_critic(OBS_DIM, gym.spaces.Discrete(2), TINY_TRANSFORMER, window=window, n_features=n_features)


def test_rejects_unsupported_action_space() -> None:
    with pytest.raises(ValueError, match="Discrete or a 1-d Box"):
        build_actor_critic(4, gym.spaces.MultiBinary(3), PRESETS["mlp"])


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_policy_outputs_export_to_onnx(tmp_path: object, name: str) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    import warnings

    model = (
        transformer(gym.spaces.Discrete(3))
        if name == "transformer"
        else build_actor_critic(OBS_DIM, gym.spaces.Discrete(3), PRESETS["mlp"]).eval()
    )
    obs = torch.randn(6, OBS_DIM)
    path = f"{tmp_path}/policy.onnx"
    with warnings.catch_warnings():
        # The TorchScript exporter (training/export.py uses it too) warns that it is deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        torch.onnx.export(
            PolicyModule(model),
            (obs,),
            path,
            input_names=["obs"],
            output_names=["logits"],
            dynamic_axes={"obs": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(path)
    other_batch = torch.randn(2, OBS_DIM)  # the batch axis is dynamic
    (exported,) = session.run(None, {"obs": other_batch.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(exported, model.policy_outputs(other_batch).numpy(), atol=1e-5)


# --- the fast paths: the transformer's written-out layers, the rollout's act, the split policy ------------------


def _reference_encoding(model: ActorCritic, obs: torch.Tensor) -> torch.Tensor:
    """What nn.TransformerEncoder's own forward computes for the latest bar (the layers are the same)."""
    body = model.actor_body
    assert isinstance(body, WindowTransformer)
    tokens = obs[:, : WINDOW * N_FEATURES].reshape(-1, WINDOW, N_FEATURES)
    return body.norm(body.encoder(body.embed(tokens) + body.position)[:, -1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("n_layers", [1, 3])
def test_transformer_encoding_and_its_gradients_match_torch_encoder_layers(n_layers: int) -> None:
    config = ModelConfig(name="transformer", d_model=16, n_layers=n_layers, n_heads=4)
    model = transformer(gym.spaces.Discrete(2), config).train()
    body = model.actor_body
    assert isinstance(body, WindowTransformer)
    obs = torch.randn(9, OBS_DIM)
    ours = body.encode(obs)
    reference = _reference_encoding(model, obs)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(ours)
    encoder_parameters = [p for name, p in body.named_parameters() if not name.startswith("project.")]
    ours_grads = torch.autograd.grad((ours * weights).sum(), encoder_parameters)
    reference_grads = torch.autograd.grad((reference * weights).sum(), encoder_parameters)
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_transformer_dropout_is_active_in_training_only() -> None:
    config = ModelConfig(name="transformer", d_model=16, n_layers=2, n_heads=2, dropout=0.5)
    model = transformer(gym.spaces.Discrete(2), config)
    obs = torch.randn(4, OBS_DIM)
    with torch.no_grad():
        torch.testing.assert_close(model.actor_body.encode(obs), _reference_encoding(model, obs), atol=1e-5, rtol=0)
        model.train()
        assert not torch.allclose(model.actor_body.encode(obs), model.actor_body.encode(obs))


@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,))])
@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_act_samples_what_get_action_and_value_samples(space: gym.spaces.Space, name: str) -> None:  # type: ignore[type-arg]
    model = transformer(space) if name == "transformer" else build_actor_critic(OBS_DIM, space, PRESETS["mlp"]).eval()
    obs = torch.randn(5, OBS_DIM)
    with torch.no_grad():
        torch.manual_seed(4)
        action, log_prob, value = model.act(obs)
        torch.manual_seed(4)
        expected_action, expected_log_prob, _, expected_value = model.get_action_and_value(obs)
    torch.testing.assert_close(action, expected_action)
    torch.testing.assert_close(log_prob, expected_log_prob)
    torch.testing.assert_close(value, expected_value)


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_split_policy_reproduces_the_policy_outputs(name: str) -> None:
    space = gym.spaces.Discrete(3)
    model = transformer(space) if name == "transformer" else build_actor_critic(OBS_DIM, space, PRESETS["mlp"]).eval()
    nn.init.normal_(model.actor_head.weight, std=1.0)
    obs = torch.randn(11, OBS_DIM)
    split = WINDOW * N_FEATURES
    encode, finish = model.split_policy(split)
    with torch.no_grad():
        torch.testing.assert_close(finish(encode(obs[:, :split]), obs[:, split:]), model.policy_outputs(obs))
    if name == "transformer":
        with pytest.raises(ValueError, match="window × n_features"):
            model.split_policy(split - 1)


@pytest.mark.parametrize("name", ["mlp", "transformer_small"])
def test_sequential_pass_with_batched_windows_trades_like_one_call_per_bar(name: str) -> None:
    from adapters.data.ohlcv import load_ohlcv
    from adapters.data.sample import sample_path
    from bot.model.features import FeatureSpec
    from training.env import EnvConfig, TradingEnv
    from training.evaluation import policy_targets

    frame = load_ohlcv(sample_path()).iloc[-1200:]
    config = EnvConfig(episode_length=None, random_start=False)
    spec = TradingEnv(frame, config, spec=FeatureSpec(window=32)).feature_spec
    torch.manual_seed(1)
    model = build_actor_critic(
        spec.observation_size, gym.spaces.Discrete(2), PRESETS[name], window=spec.window, n_features=spec.n_features
    ).eval()
    nn.init.normal_(model.actor_head.weight, std=1.0)  # decisions that change with the bar and the position
    actor = DeterministicActor(model)
    traded, batched = policy_targets(actor, frame, spec, config, CostModel())
    _, per_bar = policy_targets(lambda obs: actor(obs), frame, spec, config, CostModel())
    assert len(traded) > 1000
    assert 0.05 < batched.mean() < 0.95  # the policy trades
    np.testing.assert_array_equal(batched, per_bar)
