"""The gRPC transport: the Open Inference Protocol's `inference.GRPCInferenceService` on
grpc.aio, in the event loop of the HTTP server, answering from the same models and batchers
(the app's `State`).

Every call is checked as an HTTP request is: the bearer token (`authorization: Bearer TOKEN`
metadata; the liveness and readiness calls stay open, as the HTTP health checks do), a message
size limit (grpc refuses a larger one with RESOURCE_EXHAUSTED), the REST side's validation. A
refusal answers the gRPC status of the HTTP one (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404
NOT_FOUND, 503 UNAVAILABLE) with its message; INTERNAL is left for a bug, naming the request id.

The message classes sit in protobuf's default pool under the protocol's own names, as every
implementation's do, so a process cannot import both them and tritonclient.grpc's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError, Message

import plexa
from plexa.serving import grpc_protocol
from plexa.serving.auth import REFUSAL, authorized
from plexa.serving.logs import access, choose_id, request_id
from plexa.serving.proto import grpc_predict_v2_pb2 as pb
from plexa.serving.protocol import BadRequest

if TYPE_CHECKING:
    from plexa.serving.app import State

log = logging.getLogger("plexa.serving")
SERVICE = "inference.GRPCInferenceService"
PUBLIC = frozenset({"ServerLive", "ServerReady"})  # probes, like /v2/health/*
GRACE_SECONDS = 30.0  # as uvicorn's graceful shutdown
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# the metrics' status label: what HTTP would have answered
_HTTP = {grpc.StatusCode.OK: 200, **{code: status for status, code in STATUS.items()}}

Handler = Callable[[Any], Awaitable[Message]]


class GrpcServer:
    """One grpc.aio server on `host:port`; `start` and `stop` run in the HTTP server's loop."""

    def __init__(self, state: State, host: str, port: int) -> None:
        self.state = state
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.token = state.options.token.encode() if state.options.token else None
        self.limit = state.options.max_body_bytes
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen (raises OSError when the address cannot be bound)."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.limit),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
            ]
        )
        calls: dict[str, tuple[Handler, type[Message]]] = {
            "ServerLive": (self._server_live, pb.ServerLiveRequest),
            "ServerReady": (self._server_ready, pb.ServerReadyRequest),
            "ModelReady": (self._model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self._server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self._model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self._model_infer, pb.ModelInferRequest),
        }
        handlers: dict[str, grpc.RpcMethodHandler[bytes, Message]] = {
            name: grpc.unary_unary_rpc_method_handler(  # bytes in: a bad message is ours to refuse
                self._call(name, handler, kind), response_serializer=_serialize
            )
            for name, (handler, kind) in calls.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        try:
            bound = server.add_insecure_port(self.address)
        except RuntimeError as exc:  # grpc raises this for an address it cannot bind
            raise OSError(f"gRPC cannot listen on {self.address}: {exc}") from None
        if bound == 0:
            raise OSError(f"gRPC cannot listen on {self.address}")
        await server.start()
        self._server = server
        log.info("gRPC (Open Inference Protocol) on %s", self.address)

    def stop(self) -> asyncio.Task[None]:
        """Refuse new calls, answer those in flight (once; later calls wait for the same)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop(GRACE_SECONDS)
            log.info("gRPC stopped: every call in flight was answered")

    def _call(
        self, name: str, handler: Handler, kind: type[Message]
    ) -> Callable[[bytes, grpc.aio.ServicerContext[bytes, Message]], Awaitable[Message]]:
        """`handler` behind the request id, token, decoding, status mapping, metrics and log."""
        route = f"/{SERVICE}/{name}"
        metrics = self.state.metrics

        async def call(raw: bytes, context: grpc.aio.ServicerContext[bytes, Message]) -> Message:
            started = time.perf_counter()
            metadata = {key: value for key, value in context.invocation_metadata() or ()}
            given = metadata.get("x-request-id")
            rid = choose_id(given if isinstance(given, str) else "")
            token = request_id.set(rid)
            context.set_trailing_metadata((("x-request-id", rid),))
            code, message = grpc.StatusCode.OK, ""
            metrics.begin(route)
            try:
                try:
                    self._check_token(name, metadata.get("authorization"))
                    try:
                        request = kind.FromString(raw)
                    except DecodeError:
                        raise BadRequest(f"the request is not a valid {kind.__name__}") from None
                    return await handler(request)
                except BadRequest as exc:
                    code, message = (
                        STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT),
                        str(exc),
                    )
                except Exception:
                    log.exception("call failed")
                    code, message = grpc.StatusCode.INTERNAL, f"internal error; request id {rid}"
                await context.abort(code, message)
            finally:
                seconds = time.perf_counter() - started
                metrics.end(route, _HTTP.get(code, 500), seconds)
                access(log, rid, f"{rid} gRPC {name} {code.name} {seconds * 1e3:.1f}ms")
                request_id.reset(token)

        return call

    def _check_token(self, name: str, header: str | bytes | None) -> None:
        if self.token is None or name in PUBLIC:
            return
        given = header.encode("latin-1", "replace") if isinstance(header, str) else header
        if not authorized(given or b"", self.token):
            raise BadRequest(REFUSAL, 401)

    # ---- the calls

    async def _server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def _server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def _model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        self.state.model(request.name)
        return pb.ModelReadyResponse(ready=True)

    async def _server_metadata(
        self, request: pb.ServerMetadataRequest
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="plexa", version=plexa.__version__, extensions=[])

    async def _model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        model = self.state.model(request.name)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[_tensor_metadata(t.describe()) for t in model.inputs],
            outputs=[_tensor_metadata(t.describe()) for t in model.outputs],
        )

    async def _model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = self.state.model(request.model_name)
        parsed = grpc_protocol.parse_infer(request, model)
        outputs = await self.state.run(model, parsed.feeds, parsed.rows)
        names = [o.name for o in model.outputs]
        results = dict(zip(names, outputs, strict=True))
        return grpc_protocol.infer_response(model, parsed, results)


def _tensor_metadata(described: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(**described)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
