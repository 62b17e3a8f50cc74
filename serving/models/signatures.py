"""A SavedModel version's signatures as callables on numpy arrays, fed whatever shapes are sent.

TF Serving runs a signature by feeding its input tensors into a session and fetching its output
tensors: nothing checks the fed shapes against the SignatureDef beyond what the graph's ops
themselves need. Here a version is loaded with TensorFlow's object-based loader
(`tf.saved_model.load`), whose signature functions accept any shape too; a TF1 SavedModel that
loader cannot load (reference variables: `VariableV2` ops, assignments to them) is loaded into a
`tf.compat.v1.Session` as TF Serving does, and its signatures run as session callables.
"""

from __future__ import annotations

import logging

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from ..errors import ServingError, clean_tf_message

REFERENCE_VARIABLE_OPS = {"VariableV2", "Variable"}


def uses_reference_variables(meta_graph) -> bool:
    """Whether a MetaGraphDef holds TF1 reference variables (which only a TF1 session runs)."""
    nodes = list(meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
        nodes.extend(function.node_def)
    return any(node.op in REFERENCE_VARIABLE_OPS for node in nodes)


class _EagerSignature:
    """A signature function of `tf.saved_model.load`, called on numpy arrays."""

    def __init__(self, function):
        self._function = function

    def __call__(self, **inputs) -> dict:
        outputs = self._function(**{alias: tf.constant(value) for alias, value in inputs.items()})
        return {alias: value.numpy() for alias, value in outputs.items()}


class _SessionSignature:
    """A SignatureDef run in a TF1 session: its input tensors fed, its output tensors fetched."""

    def __init__(self, session, signature_def):
        self._inputs = sorted(signature_def.inputs)
        self._outputs = sorted(signature_def.outputs)
        options = config_pb2.CallableOptions(
            feed=[signature_def.inputs[a].name for a in self._inputs],
            fetch=[signature_def.outputs[a].name for a in self._outputs],
        )
        # A callable made from options feeds arrays as they are; `Session.run` and
        # `make_callable` would refuse shapes that differ from the placeholders' (TF Serving does not).
        self._call = session._make_callable_from_options(options)  # noqa: SLF001 - no public equivalent

    def __call__(self, **inputs) -> dict:
        values = self._call(*[np.asarray(inputs[alias]) for alias in self._inputs])
        return dict(zip(self._outputs, values, strict=True))


class SessionModel:
    """A SavedModel loaded into its own graph and `tf.compat.v1.Session` (TF1 loader)."""

    def __init__(self, path: str, tags=("serve",)):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            loader = tf.compat.v1.saved_model.loader
            self.meta_graph = loader.load(self.session, list(tags), path)

    def close(self) -> None:
        """Closes the session (its variables and kernels); its signatures fail from then on."""
        self.session.close()

    def signatures(self) -> dict:
        return {
            name: _SessionSignature(self.session, signature_def)
            for name, signature_def in self.meta_graph.signature_def.items()
            if name != "__saved_model_init_op"
        }


def load_signatures(path: str, meta_graph) -> tuple[dict, object]:
    """The signatures of the SavedModel at `path` as callables `f(**arrays) -> {alias: array}`.

    Returns:
        (signatures, the loaded object to keep alive while they are used).

    Raises:
        Exception: what the loaders raise when neither can load the SavedModel.
    """
    if uses_reference_variables(meta_graph):
        model = SessionModel(path)
        return model.signatures(), model
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # e.g. TF1 ops only a session can run: try the TF1 loader
        logging.getLogger("keras_fcn.serving").info(
            "Object-based loading of %s failed (%s); loading it into a TF1 session", path, error
        )
        try:
            model = SessionModel(path)
        except Exception:
            raise error from None
        return model.signatures(), model
    return {name: _EagerSignature(function) for name, function in loaded.signatures.items()}, loaded


_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def run_signature(function, inputs: dict) -> dict:
    """Calls a signature (`signatures.load_signatures`) on numpy inputs; TF errors keep their status code."""
    try:
        return function(**inputs)
    except tf.errors.OpError as error:
        code = _GRPC_CODES.get(error.error_code, grpc.StatusCode.INTERNAL)
        raise ServingError(code, clean_tf_message(error.message)) from error
    except (TypeError, ValueError) as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
