"""A functional Keras model's wiring, read from its public config: each layer's inputs, the model's ends.

`model.get_config()` lists the layers in the order they were called, each with the layers whose outputs
its call took (`inbound_nodes`, by `keras_history`); Keras itself rebuilds models from it. Reading it here
keeps the ONNX writer, the FLOP count and the precision rebuild off Keras's private node objects.
"""

from __future__ import annotations

from collections.abc import Iterator


def _history(value) -> Iterator[str]:
    """Names of the layers in the `keras_history` of every tensor in a call's (nested) arguments."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        yield value["config"]["keras_history"][0]
    elif isinstance(value, dict):
        for item in value.values():
            yield from _history(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _history(item)


def wiring(model) -> list[tuple[str, list[str]]]:
    """`[(layer name, [names of the layers it takes, in argument order]), ...]` in call order.

    Raises:
        ValueError: a layer called more than once (an FCN calls each layer once).
    """
    result = []
    for layer in model.get_config()["layers"]:
        nodes = layer.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise ValueError(f"layer {layer['name']!r} is called {len(nodes)} times; an FCN calls each layer once")
        result.append((layer["name"], list(_history(nodes[0]["args"])) if nodes else []))
    return result


def ends(model) -> tuple[list[str], list[str]]:
    """(input layer names, output layer names) of a functional model."""
    config = model.get_config()
    # One input or output is written [name, 0, 0]; several, a list of those.
    return tuple(
        [entry[0] for entry in ([value] if isinstance(value[0], str) else value)]
        for value in (config["input_layers"], config["output_layers"])
    )
