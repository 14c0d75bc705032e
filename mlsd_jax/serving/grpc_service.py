"""gRPC: TF Serving's ``PredictionService`` (Predict, GetModelMetadata) and ``ModelService``
(GetModelStatus) on the published protos (:mod:`mlsd_jax.serving.tfs_protos`).

An unchanged TF Serving client works: ``prediction_service_pb2_grpc.PredictionServiceStub``
with ``predict_pb2.PredictRequest`` (``model_spec`` name, version or version_label,
signature_name; ``inputs`` as ``TensorProto``; ``output_filter``), and
``model_service_pb2_grpc.ModelServiceStub.GetModelStatus``. The gRPC deadline is the request
deadline; ``x-request-id`` metadata is honoured and returned; a fallback answer carries
``x-mlsd-fallback`` in the trailing metadata. ``Predict`` shares the process's ``max_inflight``
bound with REST: beyond it a call is refused at once with ``RESOURCE_EXHAUSTED``.
"""
from __future__ import annotations

import grpc

from mlsd_jax.serving import codec, tfs_protos
from mlsd_jax.serving.errors import ServingError, invalid
from mlsd_jax.serving.runtime import SignatureInfo
from mlsd_jax.serving.service import Call, Service, request_id
from mlsd_jax.serving.store import ModelVersion

STATES = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


def _m(name: str):
    return tfs_protos.message(name)


def _metadata(context, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v
    return None


def _model_spec(spec, mv: ModelVersion, signature: str | None) -> None:
    spec.name = mv.model
    spec.version.value = mv.version
    if signature is not None:
        spec.signature_name = signature


def _resolve(service: Service, call: Call, spec) -> ModelVersion:
    if not spec.name:
        raise invalid("model_spec.name is empty")
    which = spec.WhichOneof("version_choice")
    version = spec.version.value if which == "version" else None
    label = spec.version_label if which == "version_label" else None
    return service.resolve(call, version, label)


def signature_def(info: SignatureInfo):
    sig = _m("tensorflow.SignatureDef")()
    sig.method_name = "tensorflow/serving/predict"
    for group, specs, prefix in ((sig.inputs, info.inputs, info.name),
                                 (sig.outputs, info.outputs, "StatefulPartitionedCall")):
        for k, s in specs.items():
            t = group[k]
            t.name = f"{prefix}_{k}:0"
            t.dtype = codec.tf_dtype(s)
            for n in s.json_shape():
                t.tensor_shape.dim.add().size = n
    return sig


class Servicer:
    def __init__(self, service: Service):
        self.service = service

    async def _abort(self, context, call: Call, e: ServingError) -> None:
        await self.service.finish(call, e.http_status, e.message)
        await context.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)

    async def predict(self, request, context):
        admission = self.service.admission
        if not admission.enter():     # max_inflight held: refused before any work
            rid = request_id(_metadata(context, "x-request-id"))
            e = admission.refusal()
            self.service.refused(request.model_spec.name, "grpc:predict", rid, e.message)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, e.message)
            return None
        try:
            return await self._predict(request, context)
        finally:
            admission.leave()

    async def _predict(self, request, context):
        rid = request_id(_metadata(context, "x-request-id"))
        call = Call(api="grpc:predict", model=request.model_spec.name, request_id=rid)
        await context.send_initial_metadata((("x-request-id", rid),))
        try:
            mv = _resolve(self.service, call, request.model_spec)
            signature = request.model_spec.signature_name or None
            inputs = {k: codec.from_tensor_proto(v, k) for k, v in request.inputs.items()}
            remaining = context.time_remaining()
            deadline_ms = remaining * 1000 if remaining is not None else None
            if deadline_ms is not None and deadline_ms <= 0:
                raise ServingError("DEADLINE_EXCEEDED", "the gRPC deadline has passed")
            pred = await self.service.predict(call, mv, signature, inputs, deadline_ms)
            wanted = list(request.output_filter) or list(pred.outputs)
            unknown = [k for k in wanted if k not in pred.outputs]
            if unknown:
                raise invalid(f"output_filter: unknown output {unknown[0]!r}; the model "
                              f"outputs {sorted(pred.outputs)}")
        except ServingError as e:
            await self._abort(context, call, e)
            return None
        response = _m("tensorflow.serving.PredictResponse")()
        _model_spec(response.model_spec, mv, pred.info.name)
        for k in wanted:
            codec.to_tensor_proto(pred.outputs[k], response.outputs[k])
        if pred.fallback:
            context.set_trailing_metadata((("x-mlsd-fallback", pred.fallback),))
        await self.service.finish(call, 200)
        return response

    async def get_model_metadata(self, request, context):
        call = Call(api="grpc:metadata", model=request.model_spec.name,
                    request_id=request_id(_metadata(context, "x-request-id")))
        try:
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise invalid(f"metadata_field must be [\"signature_def\"], got {fields}")
            mv = _resolve(self.service, call, request.model_spec)
        except ServingError as e:
            await context.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)
            return None
        sig_map = _m("tensorflow.serving.SignatureDefMap")()
        for k, info in mv.signatures.items():
            sig_map.signature_def[k].CopyFrom(signature_def(info))
        response = _m("tensorflow.serving.GetModelMetadataResponse")()
        _model_spec(response.model_spec, mv, None)
        any_msg = response.metadata["signature_def"]
        any_msg.type_url = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
        any_msg.value = sig_map.SerializeToString()
        return response

    async def get_model_status(self, request, context):
        from mlsd_jax.serving.rest import model_status_json

        spec = request.model_spec
        try:
            which = spec.WhichOneof("version_choice")
            status = model_status_json(
                self.service, spec.name, spec.version.value if which == "version" else None,
                spec.version_label if which == "version_label" else None)
        except ServingError as e:
            await context.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)
            return None
        response = _m("tensorflow.serving.GetModelStatusResponse")()
        for s in status["model_version_status"]:
            item = response.model_version_status.add()
            item.version = int(s["version"])
            item.state = STATES.get(s["state"], 0)
            if s["status"]["error_message"]:
                item.status.error_code = 2  # UNKNOWN
                item.status.error_message = s["status"]["error_message"]
        return response


def handlers(service: Service) -> list:
    """The generic RPC handlers for ``grpc.aio.server().add_generic_rpc_handlers``."""
    s = Servicer(service)

    def unary(fn, request_type: str, response_type: str):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_m(request_type).FromString,
            response_serializer=_m(response_type).SerializeToString)

    prediction = grpc.method_handlers_generic_handler(tfs_protos.PREDICTION_SERVICE, {
        "Predict": unary(s.predict, "tensorflow.serving.PredictRequest",
                         "tensorflow.serving.PredictResponse"),
        "GetModelMetadata": unary(s.get_model_metadata,
                                  "tensorflow.serving.GetModelMetadataRequest",
                                  "tensorflow.serving.GetModelMetadataResponse"),
    })
    models = grpc.method_handlers_generic_handler(tfs_protos.MODEL_SERVICE, {
        "GetModelStatus": unary(s.get_model_status, "tensorflow.serving.GetModelStatusRequest",
                                "tensorflow.serving.GetModelStatusResponse"),
    })
    return [prediction, models]


class Client:
    """A small TF Serving gRPC client on the same protos (the stub's RPC paths and messages),
    for tests and tools that do not install ``tensorflow-serving-api``."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target)

        def rpc(service: str, method: str, request_type: str, response_type: str):
            return self.channel.unary_unary(
                f"/{service}/{method}", request_serializer=_m(request_type).SerializeToString,
                response_deserializer=_m(response_type).FromString)

        p, m = tfs_protos.PREDICTION_SERVICE, tfs_protos.MODEL_SERVICE
        self.Predict = rpc(p, "Predict", "tensorflow.serving.PredictRequest",
                           "tensorflow.serving.PredictResponse")
        self.GetModelMetadata = rpc(p, "GetModelMetadata",
                                    "tensorflow.serving.GetModelMetadataRequest",
                                    "tensorflow.serving.GetModelMetadataResponse")
        self.GetModelStatus = rpc(m, "GetModelStatus", "tensorflow.serving.GetModelStatusRequest",
                                  "tensorflow.serving.GetModelStatusResponse")

    def predict(self, model: str, inputs, *, version: int | None = None,
                label: str | None = None, signature: str | None = None,
                timeout: float = 30.0, metadata=None):
        """Numpy inputs -> ``(outputs as numpy, response, call)``."""
        import numpy as np

        request = _m("tensorflow.serving.PredictRequest")()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        if signature is not None:
            request.model_spec.signature_name = signature
        for k, v in inputs.items():
            arr = np.asarray(v)
            if arr.dtype.kind == "U":
                arr = arr.astype(object)
            codec.to_tensor_proto(arr, request.inputs[k])
        response, call = self.Predict.with_call(request, timeout=timeout, metadata=metadata)
        outputs = {k: codec.from_tensor_proto(t, k) for k, t in response.outputs.items()}
        return outputs, response, call

    def close(self) -> None:
        self.channel.close()
