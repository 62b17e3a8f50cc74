"""TF Serving's server flags on the local server: config re-read, gRPC options, Unix socket,
Prometheus monitoring and TLS, each checked through TF Serving's own stubs over loopback."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import os
import tempfile
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image
from serving_testing import build_test_model, random_images, reference, wait_until
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from keras_fcn.cli import main
from keras_fcn.export import export_saved_model
from keras_fcn.serving import FCNClient, ModelServer, tls_credentials
from keras_fcn.serving.transport.grpc_options import parse_grpc_channel_arguments
from keras_fcn.serving.wire.tensor_codec import make_tensor_proto

TIMEOUT = 20  # seconds any one call may take


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A base path with version 1 of a small FCN-32s; returns (path, model)."""
    path = str(tmp_path_factory.mktemp("flags") / "fcn")
    model = build_test_model(num_classes=5, seed=11, variant="fcn32s")
    export_saved_model(model, path, version=1, verbose=False)
    return path, model


def _predict_request(images: np.ndarray, name: str = "fcn") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    make_tensor_proto(images, request.inputs["images"], typed=True)
    request.output_filter.append("probabilities")
    return request


def _probabilities(response) -> np.ndarray:
    import tensorflow as tf

    return tf.make_ndarray(response.outputs["probabilities"])


def _write_config(path, models: dict) -> None:
    """A ModelServerConfig text file listing `{name: base_path}`, written to a temp file then renamed."""
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" }}\n'
        for name, base_path in models.items()
    )
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(f"model_config_list {{\n{entries}}}\n" if models else "not a config {")
    os.replace(temporary, path)


# --- --model_config_file_poll_wait_seconds -------------------------------------------------------


def _available(server, name: str) -> bool:
    try:
        with FCNClient(server.grpc_address, name, timeout=TIMEOUT) as client:
            return client.status() == {1: "AVAILABLE"}
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False


def test_model_config_file_is_reread_while_serving(tmp_path, base):
    path, model = base
    config = str(tmp_path / "models.config")
    _write_config(config, {"a": path})
    images = random_images(1, 24, 24, seed=3)
    expected = reference(model, images)
    with ModelServer(
        model_config_file=config, port=0, rest_port=None, model_config_file_poll_wait_seconds=0.2
    ) as server:
        assert _available(server, "a") and not _available(server, "b")
        _write_config(config, {"a": path, "b": path})  # a model added
        wait_until(lambda: _available(server, "b"), 60, "model b to be added")
        with FCNClient(server.grpc_address, "b", timeout=TIMEOUT) as client:
            answer = client.predict(images, probabilities=True)
        np.testing.assert_allclose(answer.probabilities, expected, atol=1e-5)
        _write_config(config, {"b": path})  # a model removed
        wait_until(lambda: not _available(server, "a"), 60, "model a to be removed")
        _write_config(config, {})  # a broken file: logged, and the models served stay
        time.sleep(1.0)  # several polls of the broken file
        assert _available(server, "b") and not _available(server, "a")
        _write_config(config, {"b": path, "c": path})  # and the file is still watched
        wait_until(lambda: _available(server, "c"), 60, "model c to be added")
        assert _available(server, "b")


# --- --grpc_channel_arguments --------------------------------------------------------------------


def test_grpc_channel_arguments_syntax():
    assert parse_grpc_channel_arguments("") == []
    parsed = parse_grpc_channel_arguments("grpc.max_connection_age_ms=2000, grpc.primary_user_agent=x=y,k=3000000000")
    # a 32-bit integer is passed as an int, anything else as a string (as TF Serving does)
    assert parsed == [("grpc.max_connection_age_ms", 2000), ("grpc.primary_user_agent", "x=y"), ("k", "3000000000")]
    assert parse_grpc_channel_arguments("a=1,,b=-2,") == [("a", 1), ("b", -2)]  # empty items are skipped
    for bad in ("grpc.max_connection_age_ms", "=5", "a=1,b"):
        with pytest.raises(ValueError, match="key=value"):
            parse_grpc_channel_arguments(bad)


def test_grpc_channel_arguments_override_the_server_options(base):
    path, model = base
    small, big = random_images(1, 24, 24, seed=1), random_images(1, 64, 64, seed=1)  # 1.7 kB and 12 kB
    arguments = "grpc.max_receive_message_length=4096"
    with ModelServer("fcn", path, port=0, rest_port=None, grpc_channel_arguments=arguments) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(_predict_request(small), timeout=TIMEOUT)
            np.testing.assert_allclose(_probabilities(response), reference(model, small), atol=1e-5)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(_predict_request(big), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- --grpc_socket_path --------------------------------------------------------------------------


def test_grpc_on_a_unix_socket(base):
    path, model = base
    images = random_images(2, 24, 32, seed=4)
    with tempfile.TemporaryDirectory(prefix="fcn") as folder:  # short: socket paths are limited to ~100 bytes
        socket_path = os.path.join(folder, "grpc.sock")
        with ModelServer("fcn", path, port=0, rest_port=None, grpc_socket_path=socket_path) as server:
            assert server.grpc_socket_address == f"unix:{socket_path}" and os.path.exists(socket_path)
            with grpc.insecure_channel(server.grpc_socket_address) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                response = stub.Predict(_predict_request(images), timeout=TIMEOUT)
            assert response.model_spec.version.value == 1
            np.testing.assert_allclose(_probabilities(response), reference(model, images), atol=1e-5)
            with FCNClient(server.grpc_address, "fcn", timeout=TIMEOUT) as client:  # TCP too
                assert client.status() == {1: "AVAILABLE"}


# --- --monitoring_config_file --------------------------------------------------------------------


def _scrape(server, path: str = "/monitoring/prometheus/metrics") -> dict:
    """{(sample name, sorted labels): value} of the metrics page, parsed by prometheus_client's parser."""
    parser = pytest.importorskip("prometheus_client.parser")
    with urllib.request.urlopen(server.rest_address + path, timeout=TIMEOUT) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode("utf-8")
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.type == "counter" and name == f"{family.name}_total":
                name = family.name  # the parser's OpenMetrics spelling; TF Serving's counters have no suffix
            key = (name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def _rest(server, suffix: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.rest_address}/v1/models/{suffix}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_prometheus_endpoint_counts_requests_per_model_version_and_signature(tmp_path, base):
    path, model = base
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config {\n  enable: true\n  path: "/monitoring/prometheus/metrics"\n}\n')
    images = random_images(1, 24, 24, seed=5)
    png = io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    with ModelServer("fcn", path, port=0, rest_port=0, monitoring_config_file=str(monitoring)) as server:
        before = _scrape(server)
        assert (
            _value(before, ":keras_fcn:serving:model_version_state", model_name="fcn", version="1", state="AVAILABLE")
            == 1
        )
        load = dict(model_path=os.path.join(path, "1"), status="success")
        assert _value(before, ":tensorflow:cc:saved_model:load_attempt_count", **load) == 1
        assert _value(before, ":tensorflow:serving:request_count", model_name="fcn", status="OK") == 0
        with FCNClient(server.grpc_address, "fcn", encoded=False, timeout=TIMEOUT) as pixels:
            for _ in range(3):  # gRPC Predict on serving_default, latest version
                pixels.predict(images)
        with FCNClient(server.grpc_address, "fcn", version=1, timeout=TIMEOUT) as encoded:
            encoded.predict([png.getvalue()])  # gRPC Predict on serve_encoded, version 1
        with pytest.raises(grpc.RpcError), FCNClient(server.grpc_address, "nope", timeout=TIMEOUT) as unknown:
            unknown.predict([png.getvalue()])
        instances = {"instances": images.tolist()}
        assert [_rest(server, "fcn:predict", instances) for _ in range(2)] == [200, 200]
        assert _rest(server, "fcn/versions/1:predict", {"instances": "x"}) == 400
        assert _rest(server, "fcn") == 200  # a status GET: TF Serving counts every REST call
        after = _scrape(server)

    def moved(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    # TF Serving's families and labels
    count = ":tensorflow:serving:request_count"
    assert moved(count, model_name="fcn", status="OK") == 3 + 1 + 2 + 1
    assert moved(count, model_name="fcn", status="INVALID_ARGUMENT") == 1
    assert moved(count, model_name="(other)", status="NOT_FOUND") == 1  # a model it does not have
    latency = ":tensorflow:serving:request_latency"
    assert moved(f"{latency}_count", model_name="fcn", API="Predict", entrypoint="GRPC") == 4  # successes only
    assert moved(f"{latency}_count", model_name="fcn", API="predict", entrypoint="REST") == 2
    assert moved(f"{latency}_count", model_name="fcn", API="", entrypoint="REST") == 1
    # this server's breakdown by the version and signature that answered
    count = ":keras_fcn:serving:request_count"
    grpc_ok = dict(model_name="fcn", version="1", API="Predict", entrypoint="GRPC", status="OK")
    assert moved(count, signature_name="serving_default", **grpc_ok) == 3
    assert moved(count, signature_name="serve_encoded", **grpc_ok) == 1
    rest = dict(model_name="fcn", version="1", API="predict", entrypoint="REST")
    assert moved(count, signature_name="serving_default", status="OK", **rest) == 2
    assert moved(count, signature_name="", status="INVALID_ARGUMENT", **rest) == 1
    latency = ":keras_fcn:serving:request_latency"
    labels = dict(model_name="fcn", version="1", signature_name="serving_default", API="Predict", entrypoint="GRPC")
    buckets = sorted(
        (float(dict(key)["le"]), value)
        for (name, key), value in after.items()
        if name == f"{latency}_bucket" and {k: v for k, v in key if k != "le"} == labels
    )
    limits = [10 * 1.8**i for i in range(33)] + [float("inf")]  # TF Serving's: Buckets::Exponential(10, 1.8, 33)
    np.testing.assert_allclose([limit for limit, _ in buckets], limits, rtol=1e-5)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))  # cumulative
    assert buckets[-1][1] == _value(after, f"{latency}_count", **labels) == 3
    assert _value(after, f"{latency}_sum", **labels) > 0
    # nothing counted twice: every sample of the breakdown sums to TF Serving's count
    total = sum(v for (name, _), v in after.items() if name == ":keras_fcn:serving:request_count")
    assert total == sum(v for (name, _), v in after.items() if name == ":tensorflow:serving:request_count") == 9


def test_prometheus_endpoint_follows_the_config(tmp_path, base):
    path, _ = base
    default = "/monitoring/prometheus/metrics"
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')
    with ModelServer("fcn", path, port=0, rest_port=0, monitoring_config_file=str(monitoring)) as server:
        load = dict(model_path=os.path.join(path, "1"), status="success")
        assert _value(_scrape(server, "/metrics"), ":tensorflow:cc:saved_model:load_attempt_count", **load) == 1
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.rest_address + default, timeout=TIMEOUT)
        assert caught.value.code == 404
    monitoring.write_text("prometheus_config { enable: false }")
    with ModelServer("fcn", path, port=0, rest_port=0, monitoring_config_file=str(monitoring)) as server:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.rest_address + default, timeout=TIMEOUT)
        assert caught.value.code == 404


# --- --ssl_config_file ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for localhost/127.0.0.1, a client certificate, and a
    second CA with its own client certificate (trusted by nobody); all PEM files."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(name, key, issuer=None, issuer_key=None, ca=False, usage=None, names=()):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def write(stem, cert, key):
        files = {}
        for suffix, data in (
            ("crt", cert.public_bytes(serialization.Encoding.PEM)),
            (
                "key",
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
            ),
        ):
            files[suffix] = str(folder / f"{stem}.{suffix}")
            with open(files[suffix], "wb") as f:
                f.write(data)
        return files

    files = {}
    for ca_name in ("ca", "other_ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = certificate(f"keras-fcn test {ca_name}", ca_key, ca=True)
        files[ca_name] = write(ca_name, ca_cert, ca_key)
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = certificate("client", client_key, ca_cert, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        files[f"{ca_name}_client"] = write(f"{ca_name}_client", client, client_key)
        if ca_name == "ca":
            server_key = ec.generate_private_key(ec.SECP256R1())
            names = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
            server = certificate(
                "localhost", server_key, ca_cert, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH, names=names
            )
            files["server"] = write("server", server, server_key)
    return files


def _ssl_config(path, pki, client_verify=False, **overrides) -> str:
    """An SSLConfig text file: the PEM texts themselves, escaped into text-format strings."""

    def pem(file):
        with open(file, encoding="ascii") as f:
            return f.read().replace("\n", "\\n")

    fields = {"server_key": pem(pki["server"]["key"]), "server_cert": pem(pki["server"]["crt"])}
    if client_verify:
        fields["custom_ca"] = pem(pki["ca"]["crt"])
    fields.update(overrides)
    text = "".join(f'{key}: "{value}"\n' for key, value in fields.items())
    text += "client_verify: true\n" if client_verify else ""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def _refused(client: FCNClient) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught, client:
        client.status()
    return caught.value.code()


def test_tls_clients_need_the_ca(tmp_path, base, pki):
    path, model = base
    config = _ssl_config(tmp_path / "ssl.config", pki)
    image = random_images(1, 28, 20, seed=6)[0]
    Image.fromarray(image).save(tmp_path / "street.png")
    with ModelServer("fcn", path, port=0, rest_port=None, ssl_config_file=config) as server:
        trusted = tls_credentials(pki["ca"]["crt"])
        with FCNClient(server.grpc_address, "fcn", credentials=trusted, timeout=TIMEOUT) as client:
            answer = client.predict([str(tmp_path / "street.png")], probabilities=True)
        np.testing.assert_allclose(answer.probabilities, reference(model, image[None]), atol=1e-5)
        # The certificate names localhost and 127.0.0.1; another name must be asked for explicitly.
        named = FCNClient(f"localhost:{server.grpc_port}", "fcn", credentials=trusted, timeout=TIMEOUT)
        with named:
            assert named.status() == {1: "AVAILABLE"}
        assert _refused(FCNClient(server.grpc_address, "fcn", timeout=TIMEOUT)) == grpc.StatusCode.UNAVAILABLE
        other = tls_credentials(pki["other_ca"]["crt"])
        assert _refused(FCNClient(server.grpc_address, "fcn", credentials=other, timeout=TIMEOUT)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        wrong_name = FCNClient(
            server.grpc_address, "fcn", credentials=trusted, tls_server_name="elsewhere", timeout=TIMEOUT
        )
        assert _refused(wrong_name) == grpc.StatusCode.UNAVAILABLE
        query = ["query", "--address", server.grpc_address, "--model", "fcn", str(tmp_path / "street.png")]
        assert main([*query, "--output", str(tmp_path / "out"), "--tls-ca", pki["ca"]["crt"]]) == 0
        assert main([*query, "--output", str(tmp_path / "plain"), "--timeout", "10"]) == 2
    class_ids = np.asarray(Image.open(tmp_path / "out" / "street_class_ids.png"))
    np.testing.assert_array_equal(class_ids, reference(model, image[None]).argmax(-1)[0])


def test_tls_client_verify_requires_a_client_certificate_from_the_ca(tmp_path, base, pki, capsys):
    path, _ = base
    config = _ssl_config(tmp_path / "ssl.config", pki, client_verify=True)
    ca = pki["ca"]["crt"]
    with ModelServer("fcn", path, port=0, rest_port=None, ssl_config_file=config) as server:

        def client(cert=None, key=None):
            return FCNClient(server.grpc_address, "fcn", credentials=tls_credentials(ca, cert, key), timeout=TIMEOUT)

        assert _refused(client()) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        stranger = pki["other_ca_client"]
        assert _refused(client(stranger["crt"], stranger["key"])) == grpc.StatusCode.UNAVAILABLE
        known = pki["ca_client"]
        with client(known["crt"], known["key"]) as verified:
            assert verified.status() == {1: "AVAILABLE"}
        image = tmp_path / "street.png"
        Image.fromarray(random_images(1, 24, 24, seed=7)[0]).save(image)
        query = ["query", "--address", server.grpc_address, "--model", "fcn", str(image), "--tls-ca", ca]
        assert (
            main([*query, "--output", str(tmp_path / "out"), "--tls-cert", known["crt"], "--tls-key", known["key"]])
            == 0
        )
        assert main([*query, "--output", str(tmp_path / "out"), "--timeout", "10"]) == 2
        assert "UNAVAILABLE" in capsys.readouterr().err
    assert main([*query, "--output", str(tmp_path / "out"), "--tls-cert", known["crt"]]) == 2
    assert "key" in capsys.readouterr().err


# --- bad configuration: a clear error at start ---------------------------------------------------


def test_bad_config_files_stop_the_server_at_start(tmp_path, base, pki):
    path, _ = base
    with open(pki["ca"]["key"], encoding="ascii") as f:
        mismatched_key = f.read().replace("\n", "\\n")
    cases = {
        "an unknown SSLConfig field": (
            dict(ssl_config_file=_ssl_config(tmp_path / "a", pki, client_certificate="x")),
            'SSLConfig" has no field named "client_certificate"',
        ),
        "a file name instead of PEM text": (
            dict(ssl_config_file=_ssl_config(tmp_path / "b", pki, server_key=pki["server"]["key"])),
            "server_key must hold the PEM text itself",
        ),
        "a key of another certificate": (
            dict(ssl_config_file=_ssl_config(tmp_path / "c", pki, server_key=mismatched_key)),
            "not a usable key and certificate pair",
        ),
        "client_verify without custom_ca": (
            dict(ssl_config_file=_ssl_config(tmp_path / "d", pki, client_verify=True, custom_ca="")),
            "client_verify needs custom_ca",
        ),
        "an unknown MonitoringConfig field": (
            dict(monitoring_config_file=_text(tmp_path / "e", "prometheus_config { enable: true port: 9 }")),
            'PrometheusConfig" has no field named "port"',
        ),
        "a relative Prometheus path": (
            dict(monitoring_config_file=_text(tmp_path / "f", 'prometheus_config { enable: true path: "metrics" }')),
            "must be a URL path starting with '/'",
        ),
        "a missing monitoring file": (
            dict(monitoring_config_file=str(tmp_path / "missing")),
            "--monitoring_config_file: cannot read",
        ),
        "monitoring without REST": (
            dict(monitoring_config_file=_text(tmp_path / "g", "prometheus_config { enable: true }"), rest_port=None),
            "served on the REST port",
        ),
        "channel arguments without '='": (dict(grpc_channel_arguments="grpc.max_connection_age_ms"), "key=value"),
        "a config poll without a config file": (
            dict(model_config_file_poll_wait_seconds=1.0),
            "needs model_config_file",
        ),
    }
    for what, (kwargs, message) in cases.items():
        kwargs = {"port": 0, "rest_port": 0, **kwargs}
        with pytest.raises(ValueError, match="Received") as caught:
            ModelServer("fcn", path, **kwargs)
        assert message in str(caught.value), what


def _text(path, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def test_serve_cli_flags_are_tf_serving_spellings(tmp_path, base, capsys):
    path, _ = base
    bad = _text(tmp_path / "ssl.config", "server_key: 1 2 3")
    argv = ["serve", "--model_base_path", path, "--port", "0", "--rest_api_port", "0"]
    assert main([*argv, "--ssl_config_file", bad]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("keras-fcn serve: error: --ssl_config_file:") and "\n" not in error
    assert main([*argv, "--monitoring_config_file", str(tmp_path / "none")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main([*argv, "--grpc_channel_arguments", "x"]) == 2
    assert main([*argv, "--model_config_file_poll_wait_seconds", "5"]) == 2
    assert "--model-config-file" in capsys.readouterr().err
