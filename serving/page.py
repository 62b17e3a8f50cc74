"""The page at `/` of the REST port, and the small REST extension it reads.

TF Serving's routes (`/v1/models/...`) are left as they are; the page and the extension sit beside them:

- `GET /`, `/app.js`, `/style.css`: the page, plain files of `serving/web/` shipped with the package
  (nothing is built, nothing is fetched from elsewhere). It sends images to `serve_png` over the REST
  API and draws the class map over them.
- `GET /v1/keras_fcn/models` -> `{"models": [{"name": "fcn", "versions": ["2", "1"]}]}`: the served
  models and their loaded versions, newest first.
- `GET /v1/keras_fcn/models/M[/versions/N|/labels/L]` -> `{"name", "version", "signatures",
  "class_names", "colors"}`: one version's signature names, its class names (from
  `assets.extra/class_names.txt`, else `class_0`, ...) and the colour of each class id, from
  `keras_fcn.visualize` (the palette of `keras-fcn predict` overlays).
"""

from __future__ import annotations

import os
import re

import grpc
import numpy as np

from keras_fcn.visualize import colorize

from .errors import ServingError

WEB_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
# URL path -> (file under web/, Content-Type). Only these are served: no path is ever joined from a request.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
# The page may talk to this server only; scripts and styles come from its own files.
STATIC_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
EXTENSION_PREFIX = "/v1/keras_fcn/"
_MODELS = re.compile(r"^/v1/keras_fcn/models/?$")
_MODEL = re.compile(
    r"^/v1/keras_fcn/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d{1,18})|/labels/(?P<label>[^/:]+))?/?$"
)


def static_file(path: str) -> tuple[str, bytes] | None:
    """(Content-Type, bytes) of the page file served at `path`, or None when `path` is not one."""
    entry = STATIC_FILES.get(path)
    if entry is None:
        return None
    name, content_type = entry
    with open(os.path.join(WEB_FOLDER, name), "rb") as f:
        return content_type, f.read()


def extension_json(service, path: str) -> dict | None:
    """The answer of a `GET /v1/keras_fcn/...` route, or None when `path` is not under that prefix.

    Args:
        service: the server's `ServingService`.
        path: the request path, without its query string.

    Raises:
        ServingError: NOT_FOUND for an unknown route, model or version.
    """
    if not path.startswith(EXTENSION_PREFIX):
        return None
    if _MODELS.match(path):
        served = service.manager.available()
        return {"models": [{"name": name, "versions": [str(v) for v in versions]} for name, versions in served.items()]}
    match = _MODEL.match(path)
    if match is None:
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: GET {path}")
    version = int(match["version"]) if match["version"] else None
    loaded = service.resolve(match["name"], version, match["label"] or "")
    names = loaded.class_names or [f"class_{i}" for i in range(_num_classes(loaded))]
    return {
        "name": loaded.model_name,
        "version": str(loaded.version),
        "signatures": sorted(loaded.signature_defs),
        "class_names": names,
        "colors": colorize(np.arange(len(names))).tolist(),
    }


def _num_classes(loaded) -> int:
    """C from an output of shape (..., C) of the keras_fcn signatures (0 when there is none)."""
    for signature_def in loaded.signature_defs.values():
        info = signature_def.outputs.get("probabilities")
        if info is not None and info.tensor_shape.dim and info.tensor_shape.dim[-1].size > 0:
            return info.tensor_shape.dim[-1].size
    return 0
