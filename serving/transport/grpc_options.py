"""`--grpc_channel_arguments`: gRPC server options in TF Serving's flag syntax.

TF Serving takes a comma-separated list of `key=value` pairs
(`grpc.max_connection_age_ms=2000,grpc.max_receive_message_length=4194304`), passes each value as
an integer when it parses as a 32-bit one and as a string otherwise, and lets them override its own
settings (a 1 GiB message limit each way here).
"""

from __future__ import annotations

import re

MAX_MESSAGE_BYTES = 1 << 30  # gRPC message limit both ways: 1 GiB, as TF Serving sets it
_INT32 = range(-(1 << 31), 1 << 31)
_INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_grpc_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """Parses `key=value[,key=value...]`; an empty text is no arguments.

    Args:
        text: the value of `--grpc_channel_arguments`.

    Returns:
        `[(key, value)]`, the values as `int` where they are 32-bit integers, else as `str`.

    Raises:
        ValueError: on an item without `=` or with an empty key.
    """
    arguments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(
                "--grpc_channel_arguments takes comma-separated key=value pairs, "
                f"e.g. grpc.max_connection_age_ms=2000. Received: {item!r} in {text!r}"
            )
        value = value.strip()
        if _INTEGER.fullmatch(value) and int(value) in _INT32:
            arguments.append((key, int(value)))
        else:
            arguments.append((key, value))
    return arguments


def server_options(channel_arguments: str | dict | None = None) -> list[tuple[str, int | str]]:
    """The gRPC server's options: the default message limits, overridden by `channel_arguments`.

    Args:
        channel_arguments: TF Serving's flag text, or a `{key: value}` mapping, or None.

    Returns:
        The options list for `grpc.server(..., options=...)`, one entry per key.
    """
    options = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    }
    if isinstance(channel_arguments, str):
        channel_arguments = dict(parse_grpc_channel_arguments(channel_arguments))
    options.update(channel_arguments or {})  # one entry per key: gRPC would not say which of two wins
    return list(options.items())
