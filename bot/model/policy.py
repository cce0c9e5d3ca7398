"""Run an exported ONNX policy with onnxruntime: load it only with a valid model card, then act per bar.

Loading checks, in order: the card file exists and is valid (`bot.model.card`), the ONNX file's sha256
matches the card, the card embedded in the ONNX file agrees with the card file, the feature spec can be
computed by `bot.model.features`, and the session's input/output names, shapes and types match the card. Any
failure raises `ModelCardError` naming the file and the problem; the daemon turns that into a non-zero exit.

Acting is on the hot path: one intra-op and one inter-op thread, sequential execution, preallocated input
and action-output buffers bound to the session once (IOBinding), only the action output fetched. No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import structlog

from bot.model.card import (
    METADATA_KEY,
    ActionRange,
    ModelCard,
    ModelCardError,
    card_path_for,
    check_feature_spec,
)

if TYPE_CHECKING:
    from bot.model.features import FeatureSpec

log = structlog.get_logger()

_ORT_FLOAT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)"}


def session_options() -> ort.SessionOptions:
    """Return the session options the daemon runs policies with (one thread, sequential)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxPolicy:
    """An exported policy: maps one observation to an action and its target position in [-1, 1].

    Not thread-safe: calls share one input and one output buffer (the daemon acts from one task).
    """

    def __init__(
        self, session: ort.InferenceSession, card: ModelCard, onnx_path: Path, feature_spec: FeatureSpec
    ) -> None:
        self.session = session
        self.card = card
        self.onnx_path = onnx_path
        self.feature_spec = feature_spec
        self.observation_shape = card.observation_shape
        self.is_discrete = not isinstance(card.action_mapping, ActionRange)
        dtype = np.float32 if card.observation_dtype == "float32" else np.float64
        # Input and output live in preallocated buffers bound once: a call copies the observation in and
        # reads one number out, with no allocation (measured faster than a bare session.run).
        self._buffer: npt.NDArray[Any] = np.zeros((1, *card.observation_shape), dtype=dtype)
        if isinstance(card.action_mapping, ActionRange):
            self._targets: tuple[float, ...] = ()
            self._low, self._high = card.action_mapping.low, card.action_mapping.high
            action_type = next(o.type for o in session.get_outputs() if o.name == card.onnx_action_output)
            out_dtype: type[np.generic] = np.float32 if action_type == "tensor(float)" else np.float64
            self._output: npt.NDArray[Any] = np.zeros((1, 1), dtype=out_dtype)
        else:
            self._targets = card.action_mapping
            self._low, self._high = -1.0, 1.0
            self._output = np.zeros((1,), dtype=np.int64)
        self._input_value = ort.OrtValue.ortvalue_from_numpy(self._buffer)
        self._output_value = ort.OrtValue.ortvalue_from_numpy(self._output)
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input(card.onnx_input_name, self._input_value)
        self._binding.bind_ortvalue_output(card.onnx_action_output, self._output_value)

    @property
    def sha256(self) -> str:
        """Return the sha256 of the ONNX file (as checked against the card)."""
        assert self.card.onnx_sha256 is not None  # load() refuses cards without it
        return self.card.onnx_sha256

    @classmethod
    def load(cls, onnx_path: str | Path, card_path: str | Path | None = None) -> OnnxPolicy:
        """Load an ONNX policy and its card (default `<name>.json` beside it), refusing any mismatch."""
        path = Path(onnx_path)
        if not path.is_file():
            raise ModelCardError(f"ONNX file not found: {path}")
        card_file = Path(card_path) if card_path is not None else card_path_for(path)
        card = ModelCard.load(card_file)
        card.verify_onnx(path)
        feature_spec = check_feature_spec(card)
        try:
            session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise ModelCardError(f"onnxruntime cannot load {path}: {e}") from e
        _check_embedded_card(session, card, path)
        _check_session(session, card, path)
        log.info(
            "policy_loaded",
            path=str(path),
            sha256=card.onnx_sha256,
            run_id=card.run_id,
            action_space=card.action_space,
            observation_shape=list(card.observation_shape),
            **({"out_of_sample": summary} if (summary := card.out_of_sample()) else {}),
        )
        if doubts := card.doubts():
            log.warning("model_evidence_weak", path=str(path), run_id=card.run_id, doubts=doubts)
        return cls(session, card, path, feature_spec)

    def act(self, observation: npt.NDArray[np.floating[Any]]) -> int | float:
        """Return the policy's action for one observation: an index (discrete) or a position (continuous)."""
        if observation.shape != self.observation_shape:
            raise ValueError(f"observation must have shape {self.observation_shape}, was {observation.shape}")
        self._buffer[0] = observation
        self.session.run_with_iobinding(self._binding)
        if self.is_discrete:
            return int(self._output.item(0))
        return float(self._output.item(0))

    def target_position(self, observation: npt.NDArray[np.floating[Any]]) -> float:
        """Return the target position in [-1, 1] the policy asks for, given one observation."""
        action = self.act(observation)
        if self.is_discrete:
            return self._targets[int(action)]
        return min(max(float(action), self._low), self._high)

    def target_positions(self, observations: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """Return the target positions for a [n, *observation_shape] batch in one call (`target_position` of each)."""
        if observations.shape[1:] != self.observation_shape:
            raise ValueError(
                f"observations must have shape (n, {', '.join(map(str, self.observation_shape))}), "
                f"was {observations.shape}"
            )
        feed = {self.card.onnx_input_name: np.asarray(observations, dtype=self._buffer.dtype)}
        (actions,) = self.session.run([self.card.onnx_action_output], feed)
        if self.is_discrete:
            return np.asarray(self._targets, dtype=np.float64)[np.asarray(actions, dtype=np.int64)]
        flat = np.asarray(actions, dtype=np.float64).reshape(len(observations))
        return np.minimum(np.maximum(flat, self._low), self._high)


def _check_embedded_card(session: ort.InferenceSession, card: ModelCard, path: Path) -> None:
    embedded = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if embedded is None:
        raise ModelCardError(f"{path} has no embedded model card (metadata key {METADATA_KEY!r})")
    inside = ModelCard.from_json(embedded, source=f"{path} (embedded)").to_dict()
    outer = card.without_sha().to_dict()
    if inside != outer:
        differing = sorted(k for k in outer if outer[k] != inside.get(k))
        raise ModelCardError(f"model card file and the card embedded in {path} differ in {differing}")


def _check_session(session: ort.InferenceSession, card: ModelCard, path: Path) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != card.onnx_input_name:
        raise ModelCardError(
            f"{path}: graph inputs {[i.name for i in inputs]} != card input [{card.onnx_input_name!r}]"
        )
    expected_type = _ORT_FLOAT_TYPES[card.observation_dtype]
    if inputs[0].type != expected_type:
        raise ModelCardError(f"{path}: input {inputs[0].name!r} is {inputs[0].type}, card says {expected_type}")
    _check_shape(inputs[0].shape, card.observation_shape, f"{path}: input {inputs[0].name!r}")

    outputs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in card.onnx_output_names if n not in outputs]
    if missing:
        raise ModelCardError(f"{path}: card outputs {missing} are not in the graph's outputs {sorted(outputs)}")
    action = outputs[card.onnx_action_output]
    if isinstance(card.action_mapping, ActionRange):
        if action.type not in ("tensor(float)", "tensor(double)"):
            raise ModelCardError(f"{path}: continuous action output {action.name!r} is {action.type}, not float")
        _check_shape(action.shape, (1,), f"{path}: action output {action.name!r}")
    else:
        if action.type != "tensor(int64)":
            raise ModelCardError(f"{path}: discrete action output {action.name!r} is {action.type}, not int64")
        _check_shape(action.shape, (), f"{path}: action output {action.name!r}")
        raw = [o for name, o in outputs.items() if name != card.onnx_action_output and name in card.onnx_output_names]
        for logits in raw:
            _check_shape(logits.shape, (len(card.action_mapping),), f"{path}: output {logits.name!r}")


def _check_shape(graph_shape: list[Any], expected: tuple[int, ...], where: str) -> None:
    # Graph shapes carry the batch axis first; symbolic (str/None) dims accept any size.
    if len(graph_shape) != len(expected) + 1:
        raise ModelCardError(f"{where} has shape {graph_shape}, card needs (batch, {', '.join(map(str, expected))})")
    for got, want in zip(graph_shape[1:], expected, strict=True):
        if isinstance(got, int) and got != want:
            raise ModelCardError(f"{where} has shape {graph_shape}, card needs (batch, *{list(expected)})")


def describe(policy: OnnxPolicy) -> dict[str, Any]:
    """Return a JSON-safe summary of a loaded policy for status replies and logs."""
    card = policy.card
    return {
        "path": str(policy.onnx_path),
        "sha256": card.onnx_sha256,
        "name": card.name,
        "run_id": card.run_id,
        "run_url": card.run_url,
        "action_space": card.action_space,
        "observation_shape": list(card.observation_shape),
        "metrics": dict(card.metrics),
    }
