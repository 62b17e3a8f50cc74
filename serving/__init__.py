"""TF Serving side of keras_fcn: clients, a local TF-Serving-API server, deployment files.

- `FCNClient`: segments images through TF Serving's gRPC API (`tls_credentials` for a TLS server).
- `ModelServer`: TF Serving's gRPC and REST APIs over exported SavedModels, for local use.
- `roundtrip_check`: export, serve, query and compare with the in-process model in one call.

Each name is imported on first use: the client loads no TensorFlow, the server does.
"""

from __future__ import annotations

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "FCNClient": ".client",
    "Segmentation": ".client",
    "tls_credentials": ".client",
    "ModelServer": ".server",
    "roundtrip_check": ".roundtrip",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
