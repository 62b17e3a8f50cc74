"""`--ssl_config_file`: TLS on the gRPC API from TF Serving's `SSLConfig` text proto.

As in TF Serving, the fields hold the PEM text itself, not file names:

    server_key: "-----BEGIN PRIVATE KEY-----\\n...\\n-----END PRIVATE KEY-----\\n"
    server_cert: "-----BEGIN CERTIFICATE-----\\n...\\n-----END CERTIFICATE-----\\n"
    custom_ca: "-----BEGIN CERTIFICATE-----\\n..."   # the CA client certificates must chain to
    client_verify: true                               # refuse clients without such a certificate

The key and certificate are checked when the file is read, so a bad file stops the server at start
with a message naming the field, rather than a failed bind or failed handshakes later.
"""

from __future__ import annotations

import os
import ssl
import tempfile

import grpc

from ..models.config_protos import SSLConfig, read_text_proto

FLAG = "--ssl_config_file"
_PEM = "-----BEGIN "


def read_ssl_config(path: str):
    """Reads and checks an `SSLConfig` text file.

    Args:
        path: the file named by `--ssl_config_file`.

    Returns:
        The `SSLConfig` message.

    Raises:
        ValueError: on a file that does not parse, a field that is not PEM text, a key that does not
            match the certificate, or `client_verify` without `custom_ca`.
    """
    config = read_text_proto(path, SSLConfig, FLAG)
    for field in ("server_key", "server_cert") + (("custom_ca",) if config.custom_ca else ()):
        value = getattr(config, field)
        if _PEM not in value:
            raise ValueError(
                f"{FLAG}: {field} must hold the PEM text itself (-----BEGIN ...), as in TF Serving's SSLConfig, "
                f"not a file name. Received: {field}={value[:60]!r}"
            )
    if config.client_verify and not config.custom_ca:
        raise ValueError(
            f"{FLAG}: client_verify needs custom_ca, the CA that client certificates are checked against. "
            f"Received: client_verify=true, custom_ca=''"
        )
    _check_key_pair(config.server_key, config.server_cert)
    if config.custom_ca:
        try:
            ssl.create_default_context(cadata=config.custom_ca)
        except ssl.SSLError as error:
            raise ValueError(
                f"{FLAG}: custom_ca is not a usable certificate: {error}. Received: path={path}"
            ) from error
    return config


def _check_key_pair(key: str, cert: str) -> None:
    """Loads the pair with the standard library (it reads them from files only), in a private folder."""
    with tempfile.TemporaryDirectory() as folder:  # mode 0700: the key is readable by this user only
        key_file, cert_file = os.path.join(folder, "key.pem"), os.path.join(folder, "cert.pem")
        for name, text in ((key_file, key), (cert_file, cert)):
            with open(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as f:
                f.write(text)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
        except ssl.SSLError as error:
            raise ValueError(
                f"{FLAG}: server_key and server_cert are not a usable key and certificate pair: {error}. "
                f"Received: server_cert={cert[:60]!r}"
            ) from error


def server_credentials(config) -> grpc.ServerCredentials:
    """gRPC server credentials for an `SSLConfig`, as TF Serving builds them.

    With `client_verify` the server requests and requires a client certificate that chains to
    `custom_ca`; without it no client certificate is asked for.
    """
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() if config.custom_ca else None,
        require_client_auth=config.client_verify,
    )
