"""How large one Predict answer is, per signature, over REST (JSON) and over gRPC (protobuf).

    python tools/rest_reply_sizes.py --size 256 --classes 21

Exports an FCN-8s (VGG16's topology with narrow widths and random score weights, or `--model M.keras`),
serves it with the local TF-Serving-API server, sends one synthetic `size`x`size` PNG to each signature
and prints the bytes of each answer. REST has no `output_filter`, so a REST call receives every output
of its signature; gRPC callers filter (`FCNClient` asks `serve_encoded` for `class_map_png_bytes` only).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import urllib.request

import numpy as np


def random_fcn(num_classes: int):
    """An FCN-8s of VGG16's topology, narrow, whose score layers hold seeded random weights (a fresh one
    scores all zeros, one class everywhere)."""
    import keras

    import keras_fcn

    keras.utils.set_random_seed(0)  # the backbone's initial weights too: the same model on every run
    model = keras_fcn.build_fcn("fcn8s", num_classes, backbone_filters=(4, 8, 16, 32, 32), fc_units=32)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name.startswith("score"):
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


def rest_bytes(address: str, signature: str, image_png: bytes) -> int:
    """Bytes of the JSON answer of one row-format REST Predict call."""
    body = json.dumps({"signature_name": signature, "instances": [{"b64": base64.b64encode(image_png).decode()}]})
    request = urllib.request.Request(f"{address}/v1/models/fcn:predict", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=600) as reply:
        return len(reply.read())


def grpc_bytes(address: str, signature: str, inputs: dict, output_filter: list[str]) -> int:
    """Bytes of the serialized gRPC PredictResponse."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "fcn", signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    options = [("grpc.max_receive_message_length", 1 << 30)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=600).ByteSize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image height and width (default: 256)")
    parser.add_argument("--classes", type=int, default=21, help="classes of the random model (default: 21)")
    parser.add_argument("--model", help="a .keras FCN to measure instead of the random one")
    args = parser.parse_args()

    import keras

    import keras_fcn
    from keras_fcn.data.synthetic import SyntheticShapes
    from keras_fcn.export import export_saved_model
    from keras_fcn.serving import ModelServer
    from keras_fcn.serving.wire.images import encode_png

    if args.model:
        keras_fcn.register_keras_objects()
        model = keras.saving.load_model(args.model)
    else:
        model = random_fcn(args.classes)
    classes = int(model.outputs[0].shape[-1])
    image, _ = SyntheticShapes(num_examples=1, image_size=(args.size, args.size), seed=0).load(0)
    image_png = encode_png(image)
    with tempfile.TemporaryDirectory() as folder:
        export_saved_model(model, os.path.join(folder, "fcn"), verbose=False)
        with ModelServer("fcn", os.path.join(folder, "fcn"), port=0, rest_port=0) as server:
            rest, grpc_address = server.rest_address, server.grpc_address
            encoded = {"image_bytes": [image_png]}
            rows = [
                ("REST", "serve_encoded", "(every output)", rest_bytes(rest, "serve_encoded", image_png)),
                ("REST", "serve_png", "(class_map_png_bytes)", rest_bytes(rest, "serve_png", image_png)),
                ("gRPC", "serve_encoded", "(every output)", grpc_bytes(grpc_address, "serve_encoded", encoded, [])),
                (
                    "gRPC",
                    "serve_encoded",
                    "output_filter=class_map_png_bytes",
                    grpc_bytes(grpc_address, "serve_encoded", encoded, ["class_map_png_bytes"]),
                ),
                (
                    "gRPC",
                    "serving_default",
                    "output_filter=class_ids",
                    grpc_bytes(grpc_address, "serving_default", {"images": image[None]}, ["class_ids"]),
                ),
            ]
    present = len(np.unique(np.asarray(model(image[None].astype(np.float32))).argmax(-1)))
    print(f"one {args.size}x{args.size} PNG ({len(image_png)} bytes), {classes} classes ({present} in its class map):")
    for api, signature, outputs, size in rows:
        print(f"  {api:4} {signature:15} {outputs:34} {size:>12,d} bytes")


if __name__ == "__main__":
    main()
