"""TF Serving side of keras_fcn: clients, a local TF-Serving-API server, deployment files.

- `FCNClient`: segments images through TF Serving's gRPC API (`tls_credentials` for a TLS server).
- `ModelServer`: TF Serving's gRPC and REST APIs over exported SavedModels, for local use.
- `roundtrip_check`: export, serve, query and compare with the in-process model in one call.
"""

from .client import FCNClient, Segmentation, tls_credentials
from .roundtrip import roundtrip_check
from .server import ModelServer

__all__ = ["FCNClient", "ModelServer", "Segmentation", "roundtrip_check", "tls_credentials"]
