"""Every use of Keras internals in keras_fcn, behind a check of the Keras releases it was written for.

Public Keras API covers the rest of the package. What is here has no public equivalent yet:
- `multi_worker_workarounds`: Keras 3's `fit` under `MultiWorkerMirroredStrategy` (private build hooks);
- `read_weights_h5_layers`: reading a `.weights.h5` file by layer name (Keras's own file layout), so
  that converter output loads into any model with the same layer names.

`tests/test_keras_internals.py` fails loudly when the installed Keras is not one of `KERAS_VERSIONS` or
when one of the private names used here is gone; setup.py pins Keras to the same releases.
"""

from __future__ import annotations

import h5py
import keras
import numpy as np
import tensorflow as tf

# The Keras minor releases the code below was written and tested for.
KERAS_VERSIONS = ("3.15",)
# The private attributes of keras.Model this module touches.
PRIVATE_MODEL_ATTRIBUTES = ("_symbolic_build", "_maybe_symbolic_build")


def keras_minor_version() -> str:
    return ".".join(keras.__version__.split(".")[:2])


def require_known_keras(what: str) -> None:
    """Raises RuntimeError when the installed Keras is not a release this module was written for."""
    if keras_minor_version() not in KERAS_VERSIONS:
        raise RuntimeError(
            f"{what} relies on Keras internals checked for Keras {', '.join(KERAS_VERSIONS)}; "
            f"install one of those (setup.py pins it). Received: keras=={keras.__version__}"
        )


def multi_worker_workarounds(model: keras.Model, strategy, element_spec) -> None:
    """Two work-arounds that let Keras 3's `fit` run under `MultiWorkerMirroredStrategy`.

    1. `fit` first reduces an `(images, masks)` batch across replicas to build the model symbolically;
       the collective reduce gets the tuple as is and fails (`Attempt to convert a value (PerReplica...)`).
       Metrics, loss and optimizer are built here from the dataset's element spec instead.
    2. Each step's logs are reduced with `strategy.reduce("MEAN", value, axis=0)`, which fails on scalar
       logs (`Invalid reduction dimension 0 for input with 0 dimensions`, tensorflow/tensorflow#72388).
       The steps return their logs with a leading axis of length 1, which that reduce removes again.
    """
    require_known_keras("multi-worker training")
    with strategy.scope():
        model._symbolic_build(data_batch=element_spec)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    train_step, test_step = model.train_step, model.test_step

    def add_axis(logs):
        # Nested: a metric whose result is a dict (SegmentationScores) logs a dict within the logs.
        return tf.nest.map_structure(lambda value: tf.reshape(value, (1,)), logs)

    model.train_step = lambda data: add_axis(train_step(data))
    model.test_step = lambda data: add_axis(test_step(data))


def read_weights_h5_layers(layers, on_layer=None) -> dict:
    """Arrays by layer name from the `layers` group of a Keras 3 `.weights.h5` file.

    The layout is Keras's own, not a documented format: groups `layers/<class>/vars` whose attribute
    `name` is the layer's name, holding arrays `0`, `1`, ... in the order of the layer's weights.
    """
    require_known_keras("reading .weights.h5 files by layer name")
    weights = {}

    def visit(_, obj):
        if isinstance(obj, h5py.Group) and "name" in obj.attrs and len(obj):
            keys = sorted((k for k in obj.keys() if k.isdigit()), key=int)
            if keys:
                name = obj.attrs["name"]
                name = name.decode("utf8") if isinstance(name, bytes) else str(name)
                weights[name] = [np.asarray(obj[k]) for k in keys]
                if on_layer:
                    on_layer(name, sum(a.nbytes for a in weights[name]))

    layers.visititems(visit)
    return weights
