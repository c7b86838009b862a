"""The seed network's forward pass on TensorFlow's fused LSTM kernel, for scoring.

Keras runs an LSTM on the CPU as a loop of a dozen small operations per
character. TensorFlow also ships ``BlockLSTMV2``, one operation that runs the
whole sequence with the gate arithmetic fused: on the scoring benchmark it
scores about 20 % more reviews per second for the same numbers (largest
difference from the Keras layers 1e-6).

It stands in for the Keras layers only where it computes the same function:
the exact architecture of :func:`moderation.model.build_model` (Embedding
with ``mask_zero`` -> LSTM returning sequences -> LSTM -> Dense(1, sigmoid))
with Keras' default activations and no state, reversal or unrolling.
Anything else is scored by the Keras layers themselves.

Masking is handled by the shape of the input rather than by a mask: rows are
right-padded, so every real character comes before the padding; each row's
result is the last LSTM's state at its own last real character, which is
what the masked Keras layers return. Rows must hold at least one character.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

FUSED_ENV = "MODERATION_FUSED_LSTM"


def fused_allowed(env: Mapping[str, str] | None = None) -> bool:
    """``MODERATION_FUSED_LSTM=0`` turns the fused pass off (to compare, or to rule it out)."""
    env = os.environ if env is None else env
    return env.get(FUSED_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def unsupported_reason(model: Any) -> str | None:
    """Why the fused pass cannot stand in for ``model``; None when it can."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return f"the Keras backend is {keras.backend.backend()}, not tensorflow"
    import tensorflow as tf

    if not hasattr(tf.raw_ops, "BlockLSTMV2"):
        return "this TensorFlow has no BlockLSTMV2 kernel"
    from moderation import numpy_lstm

    # The architecture conditions are the NumPy pass's, read from the model's saved form.
    return numpy_lstm.unsupported_reason(keras.saving.serialize_keras_object(model))


def build_fused_forward(model: Any) -> Callable[[Any], Any]:
    """A traced function: right-padded int32 ids [rows, width] -> probabilities [rows, 1].

    The weights are read from the model's variables on every call, so the
    function follows the model if its weights are changed.
    """
    import tensorflow as tf

    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"the fused LSTM pass cannot score this model: {reason}")
    embedding, first, second, dense = model.layers

    def run_lstm(inputs: Any, layer: Any) -> Any:
        """All time steps of one LSTM, time-major: [width, rows, features] -> [width, rows, units]."""
        cell = layer.cell
        rows = tf.shape(inputs)[1]
        zero_state = tf.zeros([rows, cell.units], inputs.dtype)
        no_peephole = tf.zeros([cell.units], inputs.dtype)
        # Keras orders the gates i, f, c, o, as BlockLSTMV2 does; its weight is [input; recurrent] stacked.
        outputs = tf.raw_ops.BlockLSTMV2(
            seq_len_max=tf.cast(tf.shape(inputs)[0], tf.int64), x=inputs, cs_prev=zero_state, h_prev=zero_state,
            w=tf.concat([cell.kernel.value, cell.recurrent_kernel.value], axis=0),
            wci=no_peephole, wcf=no_peephole, wco=no_peephole, b=cell.bias.value,
            cell_clip=0.0, use_peephole=False,
        )
        return outputs[6]  # h: the output at every step

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def forward(ids: Any) -> Any:
        lengths = tf.math.count_nonzero(ids, axis=1, dtype=tf.int32)
        steps = tf.gather(embedding.embeddings.value, tf.transpose(ids))
        states = run_lstm(run_lstm(steps, first), second)
        rows = tf.range(tf.shape(ids)[0])
        last = tf.gather_nd(states, tf.stack([tf.maximum(lengths - 1, 0), rows], axis=1))
        return tf.sigmoid(tf.matmul(last, dense.kernel.value) + dense.bias.value)

    return forward
