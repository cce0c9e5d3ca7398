"""Actor-critic networks for PPO: an MLP and a Transformer encoder over the feature window."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ModelName = Literal["mlp", "transformer"]
Activation = Literal["tanh", "relu", "gelu"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an actor-critic network."""

    name: ModelName = "mlp"
    """Network family: "mlp" over the flat observation or "transformer" over the feature window."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Widths of the MLP hidden layers (actor and critic each get their own stack); mlp only."""
    d_model: int = 64
    """Width of the Transformer token embedding; transformer only."""
    n_layers: int = 2
    """Number of Transformer encoder layers; transformer only."""
    n_heads: int = 4
    """Number of attention heads; must divide d_model; transformer only."""
    dropout: float = 0.0
    """Dropout inside the encoder; active only during PPO updates, never in rollouts or export."""
    activation: Activation = "tanh"
    """Hidden-layer nonlinearity of the MLP stacks and of the transformer's head."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy; continuous actions only."""

    def __post_init__(self) -> None:
        if self.name not in ("mlp", "transformer"):
            raise ValueError(f"model name must be 'mlp' or 'transformer', was {self.name!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, was {self.activation!r}")
        if any(size <= 0 for size in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must all be > 0, was {self.hidden_sizes}")
        if self.d_model <= 0 or self.n_layers <= 0 or self.n_heads <= 0:
            raise ValueError(
                f"d_model, n_layers and n_heads must be > 0, were {self.d_model}, {self.n_layers}, {self.n_heads}"
            )
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), was {self.dropout}")


_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}

# The documented defaults; config/model/<name>.yaml mirrors these.
PRESETS: dict[str, ModelConfig] = {
    "mlp": ModelConfig(name="mlp", hidden_sizes=(64, 64)),
    "transformer_small": ModelConfig(name="transformer", d_model=64, n_layers=2, n_heads=4),
    "transformer_medium": ModelConfig(name="transformer", d_model=128, n_layers=3, n_heads=4),
    "transformer_large": ModelConfig(name="transformer", d_model=256, n_layers=4, n_heads=8),
}


FAMILY_KEYS: dict[str, frozenset[str]] = {
    "mlp": frozenset({"hidden_sizes"}),
    "transformer": frozenset({"d_model", "n_layers", "n_heads", "dropout"}),
}
"""ModelConfig fields only one network family reads (the others, e.g. activation, every family reads)."""


def presets_using(key: str) -> list[str]:
    """Return the presets whose network family reads ModelConfig field `key`."""
    return [name for name, config in PRESETS.items() if key in FAMILY_KEYS[config.name] or not _family_only(key)]


def _family_only(key: str) -> bool:
    return any(key in keys for keys in FAMILY_KEYS.values())


def unused_keys(family: str, keys: list[str]) -> list[str]:
    """Return those of `keys` (ModelConfig fields) that a `family` network ignores."""
    return [k for k in keys if _family_only(k) and k not in FAMILY_KEYS.get(family, frozenset())]


def preset(name: str) -> ModelConfig:
    """Return the preset model config called `name`."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


def layer_init(layer: nn.Linear, std: float = math.sqrt(2.0), bias: float = 0.0) -> nn.Linear:
    """Initialise a linear layer orthogonally with gain `std` and a constant bias."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(in_size: int, hidden_sizes: tuple[int, ...], activation: Activation) -> nn.Sequential:
    """Build an orthogonally initialised MLP trunk ending in an activation."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [layer_init(nn.Linear(in_size, size)), _ACTIVATIONS[activation]()]
        in_size = size
    return nn.Sequential(*layers)


class WindowTransformer(nn.Module):
    """Encode a flat observation [window × n_features, n_state] into one feature vector."""

    def __init__(self, window: int, n_features: int, n_state: int, config: ModelConfig) -> None:
        super().__init__()
        self.window = window
        self.n_features = n_features
        self.n_state = n_state
        self.embed = layer_init(nn.Linear(n_features, config.d_model), std=1.0)
        self.position = nn.Parameter(torch.zeros(1, window, config.d_model))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=config.d_model,
            nhead=config.n_heads,
            dim_feedforward=2 * config.d_model,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.project = nn.Sequential(
            layer_init(nn.Linear(config.d_model + n_state, config.d_model)),
            _ACTIVATIONS[config.activation](),
        )
        self.out_size = config.d_model
        self.compute_dtype: torch.dtype | None = None
        """The autocast dtype `encode` runs under (bfloat16 while PPO trains with precision=bf16:
        `encoder_precision`); None: float32, as export and the daemon run it."""

    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        """Return the normalised encoding of the latest bar, (batch, d_model), for flat windows (batch, ≥ w × f).

        Computes what ``nn.TransformerEncoder`` over all tokens followed by ``[:, -1]`` computes (the layers
        are its own, a test compares the two), but the last layer runs its query, attention output and
        feed-forward for the latest token only: the other tokens' outputs of that layer are never read.
        Under `compute_dtype` the encoder runs in autocast and its output comes back as float32.
        """
        dtype = self.compute_dtype
        if dtype is None:
            return self._encode(windows)
        with torch.autocast(windows.device.type, dtype=dtype):
            return self._encode(windows).float()

    def _encode(self, windows: torch.Tensor) -> torch.Tensor:
        n_window = self.window * self.n_features
        tokens = windows[:, :n_window].unflatten(1, (self.window, self.n_features))
        hidden = self.embed(tokens) + self.position
        layers = self.encoder.layers
        for index, layer in enumerate(layers):
            hidden = _encoder_layer(layer, hidden, latest_only=index == len(layers) - 1)
        # The last token is the most recent bar; pre-norm layers leave its output unnormalised.
        return self.norm(hidden[:, -1])  # type: ignore[no-any-return]

    def head(self, latest: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Return features (batch, d_model) from `encode`'s output and the position-state features."""
        return self.project(torch.cat([latest, state], dim=1))  # type: ignore[no-any-return]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Return features of shape (batch, d_model) for flat observations of shape (batch, obs_dim)."""
        n_window = self.window * self.n_features
        return self.head(self.encode(obs), obs[:, n_window:])


def _encoder_layer(layer: nn.Module, x: torch.Tensor, latest_only: bool) -> torch.Tensor:
    """One pre-norm ``nn.TransformerEncoderLayer`` (GELU) on (batch, tokens, d); (batch, 1, d) if `latest_only`.

    Written out for speed on the CPU, measured on transformer_small's update minibatch (1024 windows of 32
    bars, forward and backward): 105 ms with the module's own steps, 92 ms with these.
    - q, k and v come from one matmul over the packed projection (two for k and v when only the latest
      token queries), split by views: the module's own forward packs them too, but unpacks by indexing,
      whose backward fills and adds zero tensors the size of the packed one.
    - Attention is two matmuls and a softmax: at 32 tokens and head width 16, torch's fused CPU kernel
      (``scaled_dot_product_attention``) takes 35 ms forward and backward where these take 23 ms.
    """
    attention = layer.self_attn
    heads = attention.num_heads
    width, scale = attention.embed_dim, attention.head_dim**-0.5
    h = layer.norm1(x)
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    if latest_only:
        kv = F.linear(h, weight[width:], bias[width:])
        k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in kv.chunk(2, -1))
        x = x[:, -1:]
        q = F.linear(h[:, -1:], weight[:width], bias[:width]).unflatten(-1, (heads, -1)).transpose(1, 2)
    else:
        qkv = F.linear(h, weight, bias)
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in qkv.chunk(3, -1))
    scores = (q * scale) @ k.transpose(-2, -1)
    weights = F.dropout(scores.softmax(-1), attention.dropout, training=layer.training)
    attended = (weights @ v).transpose(1, 2).flatten(2)
    x = x + layer.dropout1(attention.out_proj(attended))
    feed_forward = layer.linear2(layer.dropout(F.gelu(layer.linear1(layer.norm2(x)))))
    return x + layer.dropout2(feed_forward)  # type: ignore[no-any-return]


def window_transformers(model: nn.Module) -> list[WindowTransformer]:
    """The window transformers inside `model` (none for an MLP)."""
    return [m for m in model.modules() if isinstance(m, WindowTransformer)]


@contextmanager
def encoder_precision(encoders: Sequence[WindowTransformer], dtype: torch.dtype | None) -> Iterator[None]:
    """Run `encoders` under autocast to `dtype` inside the block (None: as they are); float32 again after it."""
    if dtype is None or not encoders:
        yield
        return
    for encoder in encoders:
        encoder.compute_dtype = dtype
    try:
        yield
    finally:
        for encoder in encoders:
            encoder.compute_dtype = None


class ActorCritic(nn.Module):
    """Policy and value network with a categorical (Discrete) or Gaussian (Box) action head."""

    def __init__(
        self,
        actor_body: nn.Module,
        critic_body: nn.Module | None,
        feature_size: int,
        action_space: gym.spaces.Space[np.ndarray] | gym.spaces.Space[np.int64],
        config: ModelConfig,
    ) -> None:
        super().__init__()
        self.config = config
        self.actor_body = actor_body
        # None means the critic shares the actor's body (the transformer: one encoder, two heads).
        self.critic_body = critic_body
        self.is_discrete = isinstance(action_space, gym.spaces.Discrete)
        if isinstance(action_space, gym.spaces.Discrete):
            n_outputs = int(action_space.n)
            self.log_std: nn.Parameter | None = None
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            n_outputs = int(action_space.shape[0])
            self.log_std = nn.Parameter(torch.full((1, n_outputs), config.init_log_std))
        else:
            raise ValueError(f"action space must be Discrete or a 1-d Box, was {action_space}")
        self.actor_head = layer_init(nn.Linear(feature_size, n_outputs), std=0.01)
        self.critic_head = layer_init(nn.Linear(feature_size, 1), std=1.0)

    def policy_outputs(self, obs: torch.Tensor) -> torch.Tensor:
        """Return the policy's logits (Discrete) or action mean (Box) for a batch of observations."""
        return self.actor_head(self.actor_body(obs))  # type: ignore[no-any-return]

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """Return state values of shape (batch,)."""
        body = self.actor_body if self.critic_body is None else self.critic_body
        return self.critic_head(body(obs)).squeeze(-1)  # type: ignore[no-any-return]

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits or mean, value) for a batch of observations."""
        actor_features = self.actor_body(obs)
        critic_features = actor_features if self.critic_body is None else self.critic_body(obs)
        return self.actor_head(actor_features), self.critic_head(critic_features).squeeze(-1)

    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample actions for a rollout: (action, log_prob, value), `get_action_and_value` without the entropy.

        At rollout batch sizes (one row per sub-env) the network's arithmetic is a few microseconds and
        the per-call overhead most of the cost, so the MLP stacks call their layers' forward directly
        (module hooks are not run here) and nothing the rollout does not store is computed.
        """
        actor_features = _run(self.actor_body, obs)
        critic_features = actor_features if self.critic_body is None else _run(self.critic_body, obs)
        return self._sample(actor_features, critic_features)

    def window_encoder(self) -> tuple[int, PolicyPart] | None:
        """(width, encode) where policy and value read the observation's first `width` entries (the feature
        window) only through ``encode(windows)``, one row per window: the transformer's encoder, shared by
        actor and critic. A rollout can then encode the windows its sub-envs will visit ahead, in batches,
        and finish each step with `act_encoded`. None for a body that mixes the window with the position
        state in its first layer (the MLP: its window part is a single matmul, nothing to gain)."""
        body = self.actor_body
        if isinstance(body, WindowTransformer) and self.critic_body is None:
            return body.window * body.n_features, body.encode
        return None

    def act_encoded(
        self, encoded: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`act` from `window_encoder`'s encoding of the observations' windows and the rest of them (`state`)."""
        body = self.actor_body
        if not isinstance(body, WindowTransformer):
            raise TypeError("act_encoded needs a model whose window_encoder() is not None")
        features = body.head(encoded, state)
        return self._sample(features, features)

    def _sample(
        self, actor_features: torch.Tensor, critic_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params = self.actor_head.forward(actor_features)
        value = self.critic_head.forward(critic_features).squeeze(-1)
        if self.log_std is None:
            log_probs = F.log_softmax(params, dim=-1)
            action = sample_categorical(log_probs)
            return action, log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1), value
        log_std = self.log_std.expand_as(params)
        action = params + log_std.exp() * torch.randn_like(params)
        return action, gaussian_log_prob(action, params, log_std), value

    def get_action_and_value(
        self, obs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample an action (or score `action`) and return (action, log_prob, entropy, value)."""
        params, value = self(obs)
        if self.log_std is None:
            log_probs = F.log_softmax(params, dim=-1)
            if action is None:
                action = sample_categorical(log_probs)
            log_prob = log_probs.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
        else:
            log_std = self.log_std.expand_as(params)
            if action is None:
                action = params + log_std.exp() * torch.randn_like(params)
            log_prob = gaussian_log_prob(action, params, log_std)
            entropy = (log_std + 0.5 + _LOG_SQRT_2PI).sum(-1)
        return action, log_prob, entropy, value

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Return the most likely action: argmax of the logits or the Gaussian mean."""
        params = self.policy_outputs(obs)
        return params.argmax(-1) if self.log_std is None else params

    def split_policy(self, split: int) -> tuple[PolicyPart, PolicyFinish]:
        """Return (encode, finish) with ``finish(encode(obs[:, :split]), obs[:, split:])`` equal to
        ``policy_outputs(obs)`` up to float rounding.

        `encode` is the part of the policy that reads only the first `split` observation entries (the
        feature window, which a sequential pass knows for every bar up front), so it can run batched over
        the whole pass; `finish` adds what depends on the rest (the position state) and runs per step. The
        transformer's split is its encoder (split must be window × n_features); an MLP's is the window
        columns of its first layer; any other body encodes nothing.
        """
        body = self.actor_body
        if isinstance(body, WindowTransformer):
            if split != body.window * body.n_features:
                raise ValueError(f"the transformer splits at window × n_features = {body.window * body.n_features}")

            def finish_transformer(encoded: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
                return self.actor_head(body.head(encoded, state))  # type: ignore[no-any-return]

            return body.encode, finish_transformer
        if isinstance(body, nn.Sequential) and len(body) > 0 and isinstance(body[0], nn.Linear):
            first: nn.Linear = body[0]
            rest = body[1:]

            def encode_linear(windows: torch.Tensor) -> torch.Tensor:
                return F.linear(windows[:, :split], first.weight[:, :split], first.bias)

            def finish_linear(encoded: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
                return self.actor_head(rest(encoded + F.linear(state, first.weight[:, split:])))  # type: ignore[no-any-return]

            return encode_linear, finish_linear

        def finish_any(encoded: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
            return self.policy_outputs(torch.cat([encoded, state], dim=1))

        return (lambda windows: windows[:, :split]), finish_any


PolicyPart = Callable[[torch.Tensor], torch.Tensor]
PolicyFinish = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DeterministicActor:
    """A model's deterministic policy on numpy observation batches, wherever the model lives (CPU or CUDA).

    Calling it acts on a batch. `over_windows(windows)` prepares a sequential pass (a validation or test
    evaluation): every bar's window is encoded in large batches up front, and the function it returns acts
    on the observation of bar i running only the position-dependent rest of the network (see
    `ActorCritic.split_policy`), instead of the whole network once per bar.
    """

    ENCODE_BATCH = 1024
    """Windows encoded per forward pass in `over_windows`."""

    def __init__(self, model: ActorCritic) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Return the deterministic actions for a batch of observations."""
        with torch.inference_mode():
            batch = torch.as_tensor(obs, dtype=torch.float32).to(self.device)
            return self.model.deterministic_action(batch).cpu().numpy()

    def over_windows(self, windows: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
        """Encode `windows` (row i: the window part of bar i's observation); return act(i, obs) for one bar.

        act(i, obs) returns what ``self(obs[None])`` returns (to float rounding) when obs starts with
        windows[i].
        """
        model, device = self.model, self.device
        split = windows.shape[1]
        encode, finish = model.split_policy(split)
        chunks = [windows[begin : begin + self.ENCODE_BATCH] for begin in range(0, len(windows), self.ENCODE_BATCH)]
        with torch.inference_mode():
            encoded = torch.cat([encode(torch.from_numpy(np.array(c, np.float32)).to(device)) for c in chunks])
        discrete = model.log_std is None

        def act(index: int, obs: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                state = torch.as_tensor(obs[None, split:], dtype=torch.float32).to(device)
                params = finish(encoded[index : index + 1], state)
                return (params.argmax(-1) if discrete else params).cpu().numpy()

        return act


class PolicyModule(nn.Module):
    """Wrap an ActorCritic so that forward(obs) is its policy_outputs (for ONNX export)."""

    def __init__(self, model: ActorCritic) -> None:
        super().__init__()
        self.model = model

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Return the wrapped model's logits or action mean."""
        return self.model.policy_outputs(obs)


def sample_categorical(log_probs: torch.Tensor) -> torch.Tensor:
    """Sample one index per row from normalised log-probabilities (Gumbel-max trick).

    -log(E) with E ~ Exponential(1) is a standard Gumbel variable (E is -log U for a uniform U).
    """
    return (log_probs - torch.empty_like(log_probs).exponential_().log()).argmax(-1)


def _run(body: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply `body`, calling a Sequential's layers' forward directly (skipping the per-module call overhead)."""
    if isinstance(body, nn.Sequential):
        for layer in body:
            x = layer.forward(x)
        return x
    return body(x)  # type: ignore[no-any-return]


def gaussian_log_prob(action: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Return the log-density of a diagonal Gaussian, summed over action dimensions."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)


def build_actor_critic(
    obs_dim: int,
    action_space: gym.spaces.Space[np.ndarray] | gym.spaces.Space[np.int64],
    config: ModelConfig,
    window: int | None = None,
    n_features: int | None = None,
) -> ActorCritic:
    """Build the actor-critic network that `config` describes for flat observations of size `obs_dim`.

    The transformer reads the first window × n_features entries as a [window, n_features] matrix (oldest bar
    first) and the remaining obs_dim - window × n_features entries as position-state features.
    """
    if obs_dim <= 0:
        raise ValueError(f"obs_dim must be > 0, was {obs_dim}")
    if config.name == "mlp":
        actor_body = mlp(obs_dim, config.hidden_sizes, config.activation)
        critic_body = mlp(obs_dim, config.hidden_sizes, config.activation)
        feature_size = config.hidden_sizes[-1] if config.hidden_sizes else obs_dim
        return ActorCritic(actor_body, critic_body, feature_size, action_space, config)
    if window is None or n_features is None:
        raise ValueError("the transformer needs window and n_features (the observation's feature matrix shape)")
    n_state = obs_dim - window * n_features
    if window <= 0 or n_features <= 0 or n_state < 0:
        raise ValueError(
            f"window ({window}) × n_features ({n_features}) must be positive and fit in obs_dim ({obs_dim})"
        )
    encoder = WindowTransformer(window, n_features, n_state, config)
    return ActorCritic(encoder, None, encoder.out_size, action_space, config)
