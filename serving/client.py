"""A Python client for an FCN served by TensorFlow Serving (or `keras-fcn serve`), over gRPC.

Its calls (Predict, GetModelMetadata, GetModelStatus) use TF Serving's messages as declared in `wire`
(the same bytes as `tensorflow-serving-api`'s stubs, without loading TensorFlow, so a client starts in
a fraction of a second). It sends encoded image bytes by default
(`serve_encoded`: a JPEG is far smaller than its pixels), asks only for the compact class-map
PNGs unless probabilities are wanted (through `output_filter`), and raises the gRPC receive limit
from its 4 MiB default so that probability maps (a 512x512x21 float32 map is 22 MB) arrive.

Example:
>>> with FCNClient("localhost:8500", model_name="fcn") as client:  # doctest: +SKIP
...     result = client.predict(["street.jpg"])
...     result.class_ids.shape
(1, 375, 500)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import grpc
import numpy as np

from .wire.images import decode_class_map, decode_image, encode_png
from .wire.messages import (
    GET_MODEL_METADATA_METHOD,
    GET_MODEL_STATUS_METHOD,
    MODEL_VERSION_STATES,
    PREDICT_METHOD,
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    GetModelStatusResponse,
    PredictRequest,
    PredictResponse,
    SignatureDefMap,
)
from .wire.tensor_codec import make_ndarray, make_tensor_proto

DEFAULT_MAX_MESSAGE_BYTES = 1 << 30


@dataclasses.dataclass
class Segmentation:
    """A Predict answer.

    Attributes:
        class_ids: `(N, H, W)` int32 class ids.
        probabilities: `(N, H, W, C)` float32 softmax scores, or None when not asked for.
        model_version: the version that answered.
    """

    class_ids: np.ndarray
    probabilities: np.ndarray | None
    model_version: int


class FCNClient:
    """Segments images with a served FCN over TF Serving's gRPC API.

    Args:
        address: `host:port` of the gRPC API (8500 by TF Serving's convention).
        model_name: the served model's name.
        version: a version number to ask for; None: the latest.
        version_label: a version label (`stable`, ...) instead of a number.
        encoded: send encoded images to `serve_encoded` (default) rather than pixels to
            `serving_default`.
        timeout: seconds each call may take.
        max_message_bytes: the gRPC message limit both ways (TF Serving allows 1 GiB).
        credentials: `grpc.ChannelCredentials` for a TLS channel (see `tls_credentials`); None: plain text.
        tls_server_name: the name the server's certificate must carry, when it differs from the
            host in `address` (e.g. connecting to an IP address); needs `credentials`.

    Raises:
        ValueError: on a bad address, timeout, or both a version and a label.
    """

    def __init__(
        self,
        address: str,
        model_name: str,
        *,
        version: int | None = None,
        version_label: str | None = None,
        encoded: bool = True,
        timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        tls_server_name: str | None = None,
    ):
        if not address or ":" not in address:
            raise ValueError(f"address must be host:port. Received: address={address!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive. Received: timeout={timeout}")
        if version is not None and version_label:
            raise ValueError(
                f"give a version or a version_label, not both. Received: version={version}, "
                f"version_label={version_label!r}"
            )
        if tls_server_name and credentials is None:
            raise ValueError(f"tls_server_name needs TLS credentials. Received: tls_server_name={tls_server_name!r}")
        self.address, self.model_name = address, model_name
        self.version, self.version_label = version, version_label
        self.encoded, self.timeout = encoded, timeout
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._predict = self._channel.unary_unary(
            PREDICT_METHOD,
            request_serializer=PredictRequest.SerializeToString,
            response_deserializer=PredictResponse.FromString,
        )
        self._get_model_metadata = self._channel.unary_unary(
            GET_MODEL_METADATA_METHOD,
            request_serializer=GetModelMetadataRequest.SerializeToString,
            response_deserializer=GetModelMetadataResponse.FromString,
        )
        self._get_model_status = self._channel.unary_unary(
            GET_MODEL_STATUS_METHOD,
            request_serializer=GetModelStatusRequest.SerializeToString,
            response_deserializer=GetModelStatusResponse.FromString,
        )

    def _model_spec(self, spec, signature_name: str = "") -> None:
        spec.name = self.model_name
        if signature_name:
            spec.signature_name = signature_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label:
            spec.version_label = self.version_label

    def predict(self, images: Sequence, *, probabilities: bool = False) -> Segmentation:
        """Segments images of one size in one request.

        Args:
            images: file paths, encoded JPEG/PNG bytes, or `(H, W, 3)` uint8 arrays (sent as PNG
                when `encoded`); all of one size.
            probabilities: also return the `(N, H, W, C)` probabilities (large).

        Returns:
            A `Segmentation`.

        Raises:
            grpc.RpcError: with TF Serving's status code when the server refuses the request.
        """
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4
        ):
            images = [images]
        response = self._predict(self._request(images, probabilities), timeout=self.timeout)
        return self._answer(response, probabilities)

    def predict_tiled(
        self,
        image,
        *,
        tile_size: int | Sequence[int] = 512,
        overlap: float | int = 0.25,
        blend: str = "gaussian",
        max_in_flight: int = 4,
        probabilities: bool = False,
        on_tiles=None,
    ) -> Segmentation:
        """Segments one image of any size in overlapping tiles, for images past the server's pixel cap.

        Each tile is its own request, `max_in_flight` at a time; their probabilities are blended on the
        client as `keras_fcn.tiling.predict_tiled` blends a local model's. Every tile asks for the version
        that answered the first, so a new version loaded meanwhile does not mix into one image.

        Args:
            image: a file path, encoded bytes, or `(H, W, 3)` uint8 pixels.
            tile_size, overlap, blend: as in `keras_fcn.tiling.predict_tiled`.
            max_in_flight: tiles sent at once (each waits for the slowest of its group).
            probabilities: also return the blended `(1, H, W, C)` probabilities.
            on_tiles: called with the number of tiles after each group is answered (a progress bar).

        Returns:
            A `Segmentation` of one image.

        Raises:
            grpc.RpcError: when the server refuses a tile.
            ValueError: on bad tile arguments (see `predict_tiled`).
        """
        from keras_fcn.tiling import predict_tiled  # numpy only: no TensorFlow for the client

        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1. Received: max_in_flight={max_in_flight!r}")
        pinned = {"version": self.version}

        def tile_probabilities(tiles: np.ndarray) -> np.ndarray:
            requests = [self._request([tile.astype(np.uint8)], True, version=pinned["version"]) for tile in tiles]
            calls = [self._predict.future(request, timeout=self.timeout) for request in requests]
            answers = [self._answer(call.result(), True) for call in calls]
            pinned["version"] = answers[0].model_version
            if on_tiles is not None:
                on_tiles(len(tiles))
            return np.concatenate([answer.probabilities for answer in answers])

        answer = predict_tiled(
            tile_probabilities, _pixels(image), tile_size=tile_size, overlap=overlap, blend=blend,
            batch_size=max_in_flight, return_probabilities=probabilities,
        )  # fmt: skip
        class_ids, scores = answer if probabilities else (answer, None)
        return Segmentation(class_ids[None], None if scores is None else scores[None], pinned["version"])

    def _request(self, images, probabilities: bool, *, version: int | None = None) -> PredictRequest:
        request = PredictRequest()
        if self.encoded:
            self._model_spec(request.model_spec, "serve_encoded")
            encoded = np.array([_encoded(x) for x in images], dtype=object)
            request.inputs["image_bytes"].CopyFrom(make_tensor_proto(encoded))
            wanted = ["class_ids", "probabilities"] if probabilities else ["class_map_png_bytes"]
        else:
            self._model_spec(request.model_spec, "serving_default")
            request.inputs["images"].CopyFrom(make_tensor_proto(np.stack([_pixels(x) for x in images])))
            wanted = ["class_ids", "probabilities"] if probabilities else ["class_ids"]
        if version is not None:
            request.model_spec.version.value = version  # replaces a label (one of the two)
        request.output_filter.extend(wanted)
        return request

    @staticmethod
    def _answer(response, probabilities: bool) -> Segmentation:
        outputs = response.outputs
        if "class_map_png_bytes" in outputs:
            class_ids = np.stack([decode_class_map(png) for png in outputs["class_map_png_bytes"].string_val])
        else:
            class_ids = make_ndarray(outputs["class_ids"]).astype(np.int32)
        scores = make_ndarray(outputs["probabilities"]) if probabilities else None
        return Segmentation(class_ids, scores, response.model_spec.version.value)

    def metadata(self) -> dict:
        """The served version's SignatureDefs, from `PredictionService.GetModelMetadata`.

        Returns:
            `{signature name: SignatureDef}`: `wire.SignatureDef` messages, with the field names of
            TensorFlow's `tensorflow.SignatureDef` (`inputs`/`outputs` map names to `TensorInfo`s with
            `name`, `dtype` and `tensor_shape`; `method_name`). They are not TensorFlow's classes:
            `SerializeToString()` gives the bytes to parse with those.

        Raises:
            grpc.RpcError: with TF Serving's status code when the server refuses the request.
            ValueError: when the answer carries no `signature_def` metadata of type `SignatureDefMap`.
        """
        request = GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._get_model_metadata(request, timeout=self.timeout)
        signatures = SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signatures):
            raise ValueError(
                "the server's GetModelMetadata answer has no signature_def of type "
                f"tensorflow.serving.SignatureDefMap. Received: metadata={dict(response.metadata)!r}"
            )
        return dict(signatures.signature_def)

    def status(self) -> dict[int, str]:
        """The model's versions and their states, from `ModelService.GetModelStatus`.

        Returns:
            `{version: state name}` (`"AVAILABLE"`, `"LOADING"`, `"END"`, ...): every version the
            server tracks, or only `version` when the client was made with one.

        Raises:
            grpc.RpcError: with TF Serving's status code (NOT_FOUND for an unknown model or version).
        """
        request = GetModelStatusRequest()
        request.model_spec.name = self.model_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        response = self._get_model_status(request, timeout=self.timeout)
        return {s.version: MODEL_VERSION_STATES.get(s.state, str(s.state)) for s in response.model_version_status}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FCNClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tls_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials for a server started with `--ssl_config_file`.

    Args:
        ca_file: PEM file of the CA that signed the server's certificate; None: the system's CAs.
        cert_file: PEM client certificate, for a server with `client_verify: true`.
        key_file: PEM private key of `cert_file`.

    Returns:
        `grpc.ChannelCredentials` to pass as `FCNClient(..., credentials=...)`.

    Raises:
        ValueError: when only one of `cert_file` and `key_file` is given.
        OSError: when a file cannot be read.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError(
            f"a client certificate needs its key and the other way round. Received: cert_file={cert_file!r}, "
            f"key_file={key_file!r}"
        )

    def read(path):
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def _encoded(image) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    return encode_png(np.asarray(image, np.uint8))


def _pixels(image) -> np.ndarray:
    if isinstance(image, (bytes, str, os.PathLike)):
        return decode_image(_encoded(image))
    return np.asarray(image, np.uint8)
