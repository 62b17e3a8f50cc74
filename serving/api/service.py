"""What a request does, for both transports: the `ServingService` that gRPC's servicers and the REST API call.

Predict, Classify, Regress and MultiInference run on `ModelManager`'s versions (through the batch
scheduler when batching is on) with the client's deadline; GetModelMetadata and GetModelStatus read
them; HandleReloadConfigRequest replaces the model list after TF Serving's checks.
"""

from __future__ import annotations

import os

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2, model_management_pb2
from tensorflow_serving.apis import model_pb2 as _model_pb2

from ..errors import ServingError, check_deadline, invalid_argument
from ..models import signatures as signatures_lib
from ..models.batching import BatchScheduler
from ..models.manager import ModelManager
from ..models.versions import LoadedVersion
from ..wire.tensor_codec import MAX_REQUEST_ELEMENTS
from . import classify as classify_lib
from . import multi_inference as multi_inference_lib
from . import predict as predict_lib
from . import regress as regress_lib


def model_spec(request, field: str = "model_spec"):
    """The request's ModelSpec; INVALID_ARGUMENT `Missing ModelSpec` when it has none (TF Serving's check)."""
    if not request.HasField(field):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    return getattr(request, field)


class ServingService:
    """The requests both front ends answer, on a `ModelManager` (and a batch scheduler if enabled)."""

    def __init__(
        self,
        manager: ModelManager,
        scheduler: BatchScheduler | None = None,
        method_name_check: bool = False,
        max_request_elements: int = MAX_REQUEST_ELEMENTS,
    ):
        self.manager = manager
        self.scheduler = scheduler
        self.method_name_check = method_name_check  # TF Serving's --enable_signature_method_name_check
        self.max_request_elements = max_request_elements
        self.model_management = True  # HandleReloadConfigRequest answered (else UNIMPLEMENTED)

    def run(self, function, inputs: dict, deadline: float | None = None) -> dict:
        """Calls a signature, batched if enabled; not at all once its sender's deadline has passed."""
        if self.scheduler:
            return self.scheduler.run(function, inputs, deadline)
        check_deadline(deadline)
        return signatures_lib.run_signature(function, inputs)  # looked up here: tests replace it

    def resolve(self, name: str, version: int | None = None, label: str = "") -> LoadedVersion:
        return self.manager.model(name, version).resolve(version, label)

    def predict(self, request, deadline: float | None = None):
        version = self.manager.resolve(model_spec(request))
        run = lambda function, inputs: self.run(function, inputs, deadline)  # noqa: E731
        return predict_lib.predict(version, request, run, self.method_name_check, self.max_request_elements)

    def runner(self, deadline: float | None):
        """`run(function, inputs)` that keeps the request's deadline (in the batch queue and after the run)."""
        return lambda function, inputs: self.run(function, inputs, deadline)

    def classify(self, request, deadline: float | None = None):
        version = self.manager.resolve(model_spec(request))
        return classify_lib.classify(version, request, self.runner(deadline), self.method_name_check)

    def regress(self, request, deadline: float | None = None):
        version = self.manager.resolve(model_spec(request))
        return regress_lib.regress(version, request, self.runner(deadline), self.method_name_check)

    def multi_inference(self, request, deadline: float | None = None):
        # TF Serving resolves the first task's model, then checks the tasks against it.
        spec = request.tasks[0].model_spec if request.tasks else _model_pb2.ModelSpec()
        version = self.manager.resolve(spec)
        return multi_inference_lib.multi_inference(version, request, self.runner(deadline), self.method_name_check)

    def predict_arrays(
        self, version: LoadedVersion, signature_name: str, inputs: dict, output_filter=(), deadline=None
    ):
        run = lambda function, inputs: self.run(function, inputs, deadline)  # noqa: E731
        return predict_lib.predict_arrays(
            version, signature_name, inputs, output_filter, run, self.method_name_check
        )

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """`GetModelMetadata`: only the `signature_def` field exists, as in TF Serving."""
        spec = model_spec(request)
        fields = list(request.metadata_field)
        if not fields:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "GetModelMetadataRequest must specify at least one metadata_field",
            )
        for field in fields:
            if field != "signature_def":
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
        return self._metadata(self.manager.resolve(spec))

    def metadata_for(self, name: str, version: int | None = None, label: str = ""):
        return self._metadata(self.resolve(name, version, label))

    @staticmethod
    def _metadata(version: LoadedVersion) -> get_model_metadata_pb2.GetModelMetadataResponse:
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in version.signature_defs.items():
            signatures.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = version.model_name
        response.model_spec.version.value = version.version
        response.metadata["signature_def"].Pack(signatures)
        return response

    def status(self, request):
        return self.manager.status(model_spec(request))

    def status_for(self, name: str, version: int | None = None, label: str = ""):
        if label:  # a label names one version: report that one
            version = self.resolve(name, None, label).version
        spec = _model_pb2.ModelSpec(name=name)
        if version is not None:
            spec.version.value = version
        return self.manager.status(spec)

    def reload(self, request):
        configs = list(request.config.model_config_list.config)
        check_reload_configs(configs)
        self.manager.reload(configs)
        return model_management_pb2.ReloadConfigResponse()


def check_reload_configs(configs) -> None:
    """TF Serving's checks of a `ReloadConfigRequest`'s model list, as INVALID_ARGUMENT with its words.

    Raises:
        ServingError: INVALID_ARGUMENT for an empty list, a model without a name, a name listed twice,
            or a base path that is not absolute (TF Serving has no root folder to resolve it against).
    """
    if not configs:
        raise invalid_argument("ReloadConfigRequest must list at least one model in model_config_list")
    names = set()
    for config in configs:
        if not config.name:
            raise invalid_argument(f"ReloadConfigRequest lists a model without a name; base_path()={config.base_path}")
        if config.name in names:
            raise invalid_argument(f"Illegal to list model {config.name} multiple times in config list")
        names.add(config.name)
        if not os.path.isabs(config.base_path) and "://" not in config.base_path:
            raise invalid_argument(
                f"Expected model {config.name} to have an absolute path or URI; got base_path()={config.base_path}"
            )
