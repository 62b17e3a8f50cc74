"""The local server's own parts: config files, batching, version policy, tensors, client, CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from serving_testing import build_test_model, random_images, reference, wait_until
from tensorflow.core.framework import tensor_pb2

from keras_fcn.cli import main
from keras_fcn.export import export_saved_model
from keras_fcn.serving import FCNClient, ModelServer, roundtrip_check
from keras_fcn.serving.errors import MAX_ERROR_CHARS, ServingError
from keras_fcn.serving.models.config import BatchingParameters, parse_batching_parameters, read_model_config_file
from keras_fcn.serving.wire.tensor_codec import make_tensor_proto
from keras_fcn.visualize import class_map_png, voc_palette

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A base path with version 1 of a small FCN-32s; returns (path, {version: model})."""
    path = str(tmp_path_factory.mktemp("local") / "fcn")
    model = build_test_model(num_classes=6, seed=4, variant="fcn32s")
    export_saved_model(model, path, version=1, verbose=False)
    return path, {1: model}


# --- configuration files -------------------------------------------------------------------------


def test_batching_parameters_file_of_the_repository():
    with open(os.path.join(REPO, "serving", "batching_parameters.txt"), encoding="utf-8") as f:
        parameters = parse_batching_parameters(f.read())
    assert parameters.max_batch_size == 8 and parameters.num_batch_threads >= 1
    assert parameters.allowed_batch_sizes == [1, 2, 4, 8]


def test_batching_parameters_parsing():
    text = "# comment\nmax_batch_size { value: 4 }\nbatch_timeout_micros { value: 500 }\nallowed_batch_sizes: 2\n"
    text += "allowed_batch_sizes: 4\nthread_pool_name { value: 'pool' }\n"
    assert parse_batching_parameters(text) == BatchingParameters(
        max_batch_size=4, batch_timeout_micros=500, allowed_batch_sizes=[2, 4]
    )
    with pytest.raises(ValueError, match="cannot parse"):
        parse_batching_parameters("max_batch_size { value: 4 } garbage")
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        parse_batching_parameters("max_batch_size { value: 4 } allowed_batch_sizes: 3")


def test_batching_parameters_refuse_what_tf_serving_would_not_read_or_this_server_would_ignore():
    # A typo must not silently give the default (TF Serving's text parser refuses unknown fields too).
    with pytest.raises(ValueError, match="max_batch_sise"):
        parse_batching_parameters("max_batch_sise { value: 4 }")
    # The scalars are wrapper messages in TF Serving's schema: a bare value does not parse there either.
    with pytest.raises(ValueError, match="cannot parse"):
        parse_batching_parameters("max_batch_size: 4")
    with pytest.raises(ValueError, match="pad_variable_length_inputs"):
        parse_batching_parameters("max_batch_size { value: 4 }\npad_variable_length_inputs: true")


def test_models_config_of_the_repository():
    (config,) = read_model_config_file(os.path.join(REPO, "serving", "models.config"))
    assert config.name == "fcn" and config.base_path == "/models/fcn"
    assert config.model_version_policy.WhichOneof("policy_choice") == "latest"


# --- tensors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32),
        np.arange(-5, 300, dtype=np.int32).reshape(5, 61),
        np.arange(0, 100, dtype=np.int32).reshape(10, 10),
        np.array([b"a", b"\x00\xff"], dtype=object),
        np.array([[1.5, -2.0]], dtype=np.float64),
        np.array([1 << 40, -3], dtype=np.int64),
    ],
    ids=["float32", "int32", "small-int32", "bytes", "float64", "int64"],
)
def test_tensor_proto_uses_typed_fields_and_round_trips(array):
    proto = make_tensor_proto(array, tensor_pb2.TensorProto(), typed=True)
    assert not proto.tensor_content  # typed *_val fields, as TF Serving answers
    back = tf.make_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_long_error_messages_are_cut():
    error = ServingError(grpc.StatusCode.INVALID_ARGUMENT, "x" * 5000)
    assert error.message == "x" * MAX_ERROR_CHARS + "...TRUNCATED"


# --- versions ------------------------------------------------------------------------------------


def test_latest_policy_unloads_old_versions_and_retries_broken_ones(tmp_path, base):
    path, models = base
    local = str(tmp_path / "fcn")
    shutil.copytree(os.path.join(path, "1"), os.path.join(local, "1"))
    os.makedirs(os.path.join(local, "not_a_version"))
    with ModelServer("fcn", local, port=0, rest_port=None, poll_seconds=0.2) as server:
        client = FCNClient(server.grpc_address, "fcn")
        assert client.status() == {1: "AVAILABLE"}
        os.makedirs(os.path.join(local, "2"))  # copied slowly, without a rename: no saved_model.pb yet
        wait_until(lambda: client.status().get(2) == "END", 30, "the incomplete version to fail")
        assert client.status()[1] == "AVAILABLE"  # the old version keeps serving
        shutil.copytree(os.path.join(path, "1"), os.path.join(local, "2"), dirs_exist_ok=True)
        wait_until(lambda: client.status() == {1: "END", 2: "AVAILABLE"}, 30, "version 2 on a retry")
        shutil.copytree(os.path.join(path, "1"), os.path.join(local, "3"))
        wait_until(lambda: client.status() == {1: "END", 2: "END", 3: "AVAILABLE"}, 30, "version 3")
        images = random_images(1, 24, 24)
        assert client.predict(images).model_version == 3
        with pytest.raises(grpc.RpcError) as caught:
            FCNClient(server.grpc_address, "fcn", version=1).predict(images)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        shutil.rmtree(os.path.join(local, "3"))  # a rollback: the version before serves again
        wait_until(lambda: client.status() == {1: "END", 2: "AVAILABLE", 3: "END"}, 30, "the rollback to 2")
        assert client.predict(images).model_version == 2
        client.close()


def test_zero_padded_version_folders_are_served(tmp_path, base):
    path, models = base
    local = str(tmp_path / "fcn")
    shutil.copytree(os.path.join(path, "1"), os.path.join(local, "0007"))  # TF Serving reads it as 7
    with ModelServer("fcn", local, port=0, rest_port=None) as server, FCNClient(server.grpc_address, "fcn") as client:
        assert client.status() == {7: "AVAILABLE"}
        images = random_images(1, 24, 24, seed=2)
        answer = client.predict(images, probabilities=True)
        assert answer.model_version == 7
        np.testing.assert_allclose(answer.probabilities, reference(models[1], images), atol=1e-5)


def _served_model(base_path: str, **kwargs):
    from keras_fcn.serving.api.predict import predict
    from keras_fcn.serving.models.config import model_config
    from keras_fcn.serving.models.versions import ServedModel

    served = ServedModel(model_config("fcn", base_path), **kwargs)
    return served, lambda: served.poll(predict)


def _two_versions_served(tmp_path, path: str):
    """Versions 1 and 2 (copies of `path`'s version 1) under the latest policy, polled once."""
    local = str(tmp_path / "fcn")
    for version in (1, 2):
        shutil.copytree(os.path.join(path, "1"), os.path.join(local, str(version)))
    served, poll = _served_model(local)
    poll()
    return local, served, poll


def _states(served) -> dict:
    from keras_fcn.serving.models.versions import State

    return {version: State.Name(state) for version, (state, _) in served.states().items()}


def _probabilities(served, images) -> np.ndarray:
    from keras_fcn.serving.models.signatures import run_signature

    _, _, function = served.resolve(None).signature("")
    return run_signature(function, {"images": images})["probabilities"]


def test_failed_loads_are_retried_a_bounded_number_of_times(tmp_path, base):
    path, _ = base
    local = str(tmp_path / "fcn")
    served, poll = _served_model(local, max_num_load_retries=2)
    os.makedirs(os.path.join(local, "1"))
    for _ in range(3):  # the first load and two retries
        poll()
        assert _states(served) == {1: "END"} and "Could not find SavedModel" in served.states()[1][1]
    shutil.copytree(os.path.join(path, "1"), os.path.join(local, "1"), dirs_exist_ok=True)
    poll()
    assert _states(served) == {1: "END"}  # no retries left
    shutil.rmtree(os.path.join(local, "1"))
    poll()
    shutil.copytree(os.path.join(path, "1"), os.path.join(local, "1"))  # back again: a new version
    poll()
    assert _states(served) == {1: "AVAILABLE"}


def test_rollback_and_reexport_of_a_deleted_version(tmp_path, base):
    path, models = base
    local, served, poll = _two_versions_served(tmp_path, path)
    assert _states(served) == {2: "AVAILABLE"}  # the latest policy loads only version 2
    shutil.rmtree(os.path.join(local, "2"))
    poll()
    assert _states(served) == {1: "AVAILABLE", 2: "END"} and served.resolve(None).version == 1
    shutil.rmtree(os.path.join(local, "1"))
    poll()
    assert _states(served) == {1: "END", 2: "END"}  # nothing left on disk: nothing served
    images = random_images(1, 24, 24, seed=7)
    other = build_test_model(num_classes=6, seed=8, variant="fcn32s")
    export_saved_model(other, local, version=2, verbose=False)
    poll()
    assert _states(served) == {1: "END", 2: "AVAILABLE"}
    np.testing.assert_allclose(_probabilities(served, images), reference(other, images), atol=1e-5)
    # Deleted and exported again between two polls: the new folder replaces the model in memory.
    shutil.rmtree(os.path.join(local, "2"))
    export_saved_model(models[1], local, version=2, verbose=False)
    poll()
    assert _states(served) == {1: "END", 2: "AVAILABLE"}
    np.testing.assert_allclose(_probabilities(served, images), reference(models[1], images), atol=1e-5)


def test_a_version_caught_half_deleted_or_replaced_by_a_broken_folder_keeps_serving(tmp_path, base):
    path, models = base
    local, served, poll = _two_versions_served(tmp_path, path)
    images = random_images(1, 24, 24, seed=5)
    # A poll between two steps of `rm -r 2`: the folder is there, its SavedModel is not.
    os.remove(os.path.join(local, "2", "saved_model.pb"))
    poll()
    assert _states(served) == {2: "AVAILABLE"} and served.resolve(None).version == 2
    np.testing.assert_allclose(_probabilities(served, images), reference(models[1], images), atol=1e-5)
    shutil.rmtree(os.path.join(local, "2"))
    poll()
    assert _states(served) == {1: "AVAILABLE", 2: "END"} and served.resolve(None).version == 1
    # A folder replaced by a broken one under the loaded number: the copy in memory serves on.
    shutil.rmtree(os.path.join(local, "1"))
    os.makedirs(os.path.join(local, "1", "variables"))
    with open(os.path.join(local, "1", "saved_model.pb"), "wb") as f:
        f.write(b"\x0a\xff\xff\xff not a SavedModel")
    poll()
    assert _states(served) == {1: "AVAILABLE", 2: "END"} and served.resolve(None).version == 1
    np.testing.assert_allclose(_probabilities(served, images), reference(models[1], images), atol=1e-5)


def test_model_config_file_with_labels(tmp_path, base):
    path, models = base
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "seg" base_path: "{path}" model_platform: "tensorflow" '
        'model_version_policy { specific { versions: 1 } } version_labels { key: "stable" value: 1 } } }'
    )
    with ModelServer(model_config_file=str(config), port=0, rest_port=0) as server:
        images = random_images(1, 20, 28, seed=1)
        answer = FCNClient(server.grpc_address, "seg", version_label="stable").predict(images, probabilities=True)
        np.testing.assert_allclose(answer.probabilities, reference(models[1], images), atol=1e-5)
        pixels = FCNClient(server.grpc_address, "seg", encoded=False).predict(images)  # serving_default
        np.testing.assert_array_equal(pixels.class_ids, reference(models[1], images).argmax(-1))
        url = f"{server.rest_address}/v1/models/seg/labels/stable"
        with urllib.request.urlopen(url) as reply:
            assert json.loads(reply.read())["model_version_status"][0]["version"] == "1"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(url + ":predict", data=b"{not json"))
        assert caught.value.code == 400 and "JSON" in json.loads(caught.value.read())["error"]


# --- batching ------------------------------------------------------------------------------------


def test_batching_merges_concurrent_requests_and_keeps_errors_apart(tmp_path, base):
    path, models = base
    parameters = BatchingParameters(max_batch_size=8, batch_timeout_micros=300_000, allowed_batch_sizes=[4, 8])
    images = random_images(8, 32, 32, seed=2)
    sent = [images[i : i + 1] for i in range(8)] + [random_images(1, 40, 32, seed=3), b"not an image"]
    with ModelServer("fcn", path, port=0, rest_port=None, enable_batching=True, batching_parameters=parameters) as s:
        results, barrier = {}, threading.Barrier(len(sent))

        def ask(index):
            client = FCNClient(s.grpc_address, "fcn")
            barrier.wait()
            try:
                results[index] = client.predict(sent[index], probabilities=True)
            except grpc.RpcError as error:
                results[index] = error
            client.close()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(sent))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Requests of two image sizes and a corrupt one were queued together: each gets its own answer.
        for index in range(9):
            np.testing.assert_allclose(results[index].probabilities, reference(models[1], sent[index]), atol=1e-5)
        assert results[9].code() == grpc.StatusCode.INVALID_ARGUMENT
        assert s.scheduler.examples_run > s.scheduler.batches_run  # requests did share model calls


def test_stopping_the_scheduler_fails_queued_requests_with_unavailable():
    from keras_fcn.serving.models.batching import BatchScheduler

    calls = []
    # A batch that only a full queue or a minute's wait would start: the request stays queued.
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=60_000_000))
    errors = []

    def ask():
        try:
            scheduler.run(lambda **inputs: calls.append(inputs), {"images": np.zeros((1, 4, 4, 3), np.uint8)})
        except ServingError as error:
            errors.append(error)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    wait_until(lambda: scheduler._queue, 30, "the request to be queued")
    scheduler.stop()
    thread.join(timeout=30)
    assert not thread.is_alive() and not calls
    assert [error.code for error in errors] == [grpc.StatusCode.UNAVAILABLE]
    with pytest.raises(ServingError) as caught:  # after the stop, nothing is queued any more
        scheduler.run(lambda **inputs: None, {"images": np.zeros((1, 4, 4, 3), np.uint8)})
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


# --- client, CLI, round trip ---------------------------------------------------------------------


def test_query_cli_writes_class_id_and_overlay_pngs(tmp_path, base):
    path, models = base
    image = random_images(1, 36, 28, seed=5)[0]
    Image.fromarray(image).save(tmp_path / "street.png")
    with ModelServer("fcn", path, port=0, rest_port=None) as server:
        argv = ["query", "--address", server.grpc_address, "--model", "fcn", str(tmp_path / "street.png")]
        assert main([*argv, "--output", str(tmp_path / "out")]) == 0
        assert (
            main(
                [
                    "query",
                    "--address",
                    server.grpc_address,
                    "--model",
                    "nope",
                    str(tmp_path / "street.png"),
                    "--output",
                    str(tmp_path / "out"),
                ]
            )
            == 2
        )
    class_ids = np.asarray(Image.open(tmp_path / "out" / "street_class_ids.png"))
    np.testing.assert_array_equal(class_ids, reference(models[1], image[None]).argmax(-1)[0])
    overlay = np.asarray(Image.open(tmp_path / "out" / "street_overlay.png"))
    assert overlay.shape[1] > 28  # the picture, then a legend strip
    colors = voc_palette(6)[class_ids].astype(np.float64)
    expected = np.where((class_ids > 0)[..., None], np.floor(0.5 * image + 0.5 * colors), image)
    np.testing.assert_array_equal(overlay[:36, :28], expected)


def test_class_map_png_uses_the_voc_palette():
    image = Image.open(__import__("io").BytesIO(class_map_png(np.array([[0, 1], [2, 15]]))))
    assert image.mode == "P"
    assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # VOC: black, maroon, green
    np.testing.assert_array_equal(np.asarray(image), [[0, 1], [2, 15]])


def test_roundtrip_check(tmp_path):
    model = build_test_model(num_classes=4, seed=6, variant="fcn32s")
    figures = roundtrip_check(model, random_images(2, 40, 40, seed=6), str(tmp_path))
    assert figures["version"] == 1 and os.path.isdir(figures["export_path"])
    assert figures["max_abs_difference"] < 1e-5 and figures["class_agreement"] > 0.99
    assert figures["grpc_seconds"] > 0 and figures["in_process_seconds"] > 0


def test_serve_cli_refuses_incomplete_flags(capsys):
    assert main(["serve", "--port", "0"]) == 2
    assert "--model-base-path" in capsys.readouterr().err
    assert main(["serve", "--model-base-path", "x", "--batching-parameters-file", "f"]) == 2
    assert "--enable-batching" in capsys.readouterr().err


def test_client_argument_checks():
    with pytest.raises(ValueError, match="Received: address"):
        FCNClient("localhost", "fcn")
    with pytest.raises(ValueError, match="Received: version=1"):
        FCNClient("localhost:8500", "fcn", version=1, version_label="stable")
    with pytest.raises(ValueError, match="Received: model_name"):
        ModelServer(None, "/tmp")


def test_compose_file_parses_and_points_tf_serving_at_the_repository_files():
    # Parses the YAML and checks what it would run; no container is started (no Docker image can be had here).
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(REPO, "serving", "docker-compose.yml"), encoding="utf-8") as f:
        (service,) = yaml.safe_load(f)["services"].values()
    assert service["image"].startswith("tensorflow/serving:")
    # Loopback unless KERAS_FCN_BIND says otherwise, as compose expands "${VAR:-default}".
    expand = lambda text, bind: re.sub(r"\$\{KERAS_FCN_BIND:-([^}]*)\}", lambda m: bind or m[1], text)
    assert {expand(p, None) for p in service["ports"]} == {"127.0.0.1:8500:8500", "127.0.0.1:8501:8501"}
    assert {expand(p, "0.0.0.0") for p in service["ports"]} == {"0.0.0.0:8500:8500", "0.0.0.0:8501:8501"}
    mounts = {volume.rsplit(":", 2)[1]: volume.rsplit(":", 2)[0] for volume in service["volumes"]}
    flags = dict(flag.lstrip("-").partition("=")[::2] for flag in service["command"])
    assert mounts[flags["model_config_file"]] == "./models.config"
    assert mounts[flags["batching_parameters_file"]] == "./batching_parameters.txt"
    (config,) = read_model_config_file(os.path.join(REPO, "serving", "models.config"))
    assert config.base_path in mounts and "enable_batching" in flags


def test_binds_loopback_unless_told(base):
    path, _ = base
    with ModelServer("fcn", path, port=0, rest_port=0) as server:
        assert server.grpc_address.startswith("127.0.0.1:")
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=5):
            pass
        outside = _non_loopback_address()
        if outside is None:
            pytest.skip("no non-loopback address on this machine")
        with pytest.raises(OSError):
            socket.create_connection((outside, server.rest_port), timeout=5).close()


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_reload_config_request_switches_models(base, tmp_path):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    path, _ = base
    with ModelServer("fcn", path, port=0, rest_port=None) as server:
        request = model_management_pb2.ReloadConfigRequest()
        request.config.model_config_list.config.add(name="renamed", base_path=path, model_platform="tensorflow")
        with grpc.insecure_channel(server.grpc_address) as channel:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
        assert FCNClient(server.grpc_address, "renamed").status() == {1: "AVAILABLE"}
        with pytest.raises(grpc.RpcError) as caught:
            FCNClient(server.grpc_address, "fcn").status()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_tensor_claiming_a_huge_shape_is_refused(base):
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    path, _ = base
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fcn"
    bomb = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, int_val=[7])  # one value for 30 G pixels
    for size in (1, 100_000, 100_000, 3):
        bomb.tensor_shape.dim.add(size=size)
    request.inputs["images"].CopyFrom(bomb)
    with ModelServer("fcn", path, port=0, rest_port=None) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request too large" in caught.value.details() and "[1, 100000, 100000, 3]" in caught.value.details()
        assert FCNClient(server.grpc_address, "fcn").status() == {1: "AVAILABLE"}


def _half_plus_two_requests(kind: str):
    """A Classify, Regress or MultiInference request of one tf.Example (x = 1) to half_plus_two."""
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    if kind == "multi_inference":
        request = inference_pb2.MultiInferenceRequest()
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = "hp", "regress_x_to_y"
        task.method_name = "tensorflow/serving/regress"
    else:
        kinds = {"classify": classification_pb2.ClassificationRequest, "regress": regression_pb2.RegressionRequest}
        request = kinds[kind]()
        request.model_spec.name = "hp"
        request.model_spec.signature_name = f"{kind}_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
    return request


@pytest.mark.parametrize("kind", ["classify", "regress", "multi_inference"])
def test_classify_regress_and_multi_inference_keep_the_clients_deadline(tmp_path, kind):
    """A call whose deadline passes while it waits for a batch is dropped by the server, not run later."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    from upstream_models import half_plus_n_tf1

    half_plus_n_tf1(str(tmp_path / "hp" / "1"))
    # A lone request waits 1 s for a batch; its 0.3 s deadline passes first.
    parameters = BatchingParameters(max_batch_size=8, batch_timeout_micros=1_000_000)
    with ModelServer(
        "hp", str(tmp_path / "hp"), port=0, rest_port=None, enable_batching=True, batching_parameters=parameters
    ) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            call = {"classify": stub.Classify, "regress": stub.Regress, "multi_inference": stub.MultiInference}[kind]
            with pytest.raises(grpc.RpcError) as caught:
                call(_half_plus_two_requests(kind), timeout=0.3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(1.5)  # past the batch timeout: a request kept without its deadline would have run by now
            assert server.scheduler.examples_run == 0
            call(_half_plus_two_requests(kind), timeout=30)  # with time to wait, it is answered
            assert server.scheduler.examples_run == 1


def test_a_tf1_session_is_closed_once_its_version_is_unloaded(tmp_path):
    from upstream_models import half_plus_n_tf1

    base = tmp_path / "hp"
    half_plus_n_tf1(str(base / "1"), ref_variables=True)  # reference variables: only a TF1 session loads it
    with ModelServer("hp", str(base), port=0, rest_port=None, poll_seconds=0.2) as server:
        client = FCNClient(server.grpc_address, "hp")
        session = server._manager.model("hp").resolve(None)._saved_model.session
        assert session.run("a:0") == 0.5
        half_plus_n_tf1(str(base / "2"), b=3.0, ref_variables=True)  # the latest policy unloads version 1
        wait_until(lambda: client.status() == {1: "END", 2: "AVAILABLE"}, 60, "version 2 to replace 1")
        client.close()
        with pytest.raises(RuntimeError, match="closed Session"):
            session.run("a:0")
