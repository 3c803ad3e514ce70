"""The Open Inference Protocol's `inference.GRPCInferenceService` on plexa's own gRPC transport
(`grpc_transport`), in the event loop of the HTTP server, answering from the same models and
batchers (the app's `State`).

Every call is checked as an HTTP request is: the bearer token (`authorization: Bearer TOKEN`
metadata; the liveness and readiness calls stay open, as the HTTP health checks do), a message
size limit (a larger one is refused with RESOURCE_EXHAUSTED), the REST side's validation. A
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

from google.protobuf.message import DecodeError, Message

import plexa
from plexa.serving import grpc_protocol, grpc_transport
from plexa.serving.auth import REFUSAL, authorized
from plexa.serving.grpc_transport import Reply, Status
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
    400: Status.INVALID_ARGUMENT,
    401: Status.UNAUTHENTICATED,
    404: Status.NOT_FOUND,
    413: Status.RESOURCE_EXHAUSTED,
    503: Status.UNAVAILABLE,
}
# the metrics' status label: what HTTP would have answered (499: the client gave up)
_HTTP = {Status.OK: 200, Status.CANCELLED: 499, **{code: status for status, code in STATUS.items()}}
_NAMES = {code: code.name for code in Status}  # (an enum member's .name is a property call)

Handler = Callable[[Any], Awaitable[Message]]


class GrpcServer:
    """One gRPC listener on `host:port`; `start` and `stop` run in the HTTP server's loop."""

    def __init__(self, state: State, host: str, port: int) -> None:
        self.state = state
        self.host, self.port = host, port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.token = state.options.token.encode() if state.options.token else None
        calls: dict[str, tuple[Handler, type[Message]]] = {
            "ServerLive": (self._server_live, pb.ServerLiveRequest),
            "ServerReady": (self._server_ready, pb.ServerReadyRequest),
            "ModelReady": (self._model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self._server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self._model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self._model_infer, pb.ModelInferRequest),
        }
        self.service = grpc_transport.GrpcService(
            SERVICE,
            {name: self._call(name, *call) for name, call in calls.items()},
            state.options.max_body_bytes,
        )
        self._server: asyncio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen (raises OSError when the address cannot be bound)."""
        try:
            self._server = await grpc_transport.listen(self.service, self.host, self.port)
        except OSError as exc:
            raise OSError(f"gRPC cannot listen on {self.address}: {exc.strerror or exc}") from None
        log.info("gRPC (Open Inference Protocol) on %s", self.address)

    def stop(self) -> asyncio.Task[None]:
        """Refuse new calls, answer those in flight (once; later calls wait for the same)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        if self._server is not None:
            await grpc_transport.stop(self.service, self._server, GRACE_SECONDS)
            log.info("gRPC stopped: every call in flight was answered")

    def _call(self, name: str, handler: Handler, kind: type[Message]) -> grpc_transport.Method:
        """`handler` behind the request id, token, decoding, status mapping, metrics and log."""
        route = f"/{SERVICE}/{name}"
        metrics = self.state.metrics
        checks_token = self.token is not None and name not in PUBLIC

        async def call(metadata: dict[str, str], raw: bytes) -> Reply:
            started = time.perf_counter()
            rid = choose_id(metadata.get("x-request-id", ""))
            token = request_id.set(rid)
            trailers = (("x-request-id", rid),)
            code = Status.OK
            metrics.begin(route)
            try:
                try:
                    if checks_token:
                        self._check_token(metadata.get("authorization"))
                    try:
                        request = kind.FromString(raw)
                    except DecodeError:
                        raise BadRequest(f"the request is not a valid {kind.__name__}") from None
                    response = await handler(request)
                    return Reply(body=response.SerializeToString(), trailers=trailers)
                except BadRequest as exc:
                    code = STATUS.get(exc.status, Status.INVALID_ARGUMENT)
                    return Reply(code, str(exc), trailers=trailers)
                except Exception:
                    log.exception("call failed")
                    code = Status.INTERNAL
                    return Reply(code, f"internal error; request id {rid}", trailers=trailers)
            except asyncio.CancelledError:  # the client reset the call: nobody is answered
                code = Status.CANCELLED
                raise
            finally:
                seconds = time.perf_counter() - started
                metrics.end(route, _HTTP.get(code, 500), seconds)
                access(log, rid, f"{rid} gRPC {name} {_NAMES[code]} {seconds * 1e3:.1f}ms")
                request_id.reset(token)

        return call

    def _check_token(self, header: str | None) -> None:
        assert self.token is not None  # (only asked when the server has one)
        given = header.encode("latin-1", "replace") if header is not None else b""
        if not authorized(given, self.token):
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
        results = dict(zip(model.output_names, outputs, strict=True))
        return grpc_protocol.infer_response(model, parsed, results)


def _tensor_metadata(described: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(**described)
