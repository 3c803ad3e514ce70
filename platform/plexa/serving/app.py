"""The HTTP server: Open Inference Protocol v2 routes, /predict, /sample, /metrics and the page.

Models load (and warm up) after the server starts listening, so liveness answers at once and
readiness only once every model can answer. Every refusal is JSON `{"error": "..."}` with a 4xx
status (the shape `tritonclient` reads); an unexpected failure is a 500 naming the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.responses import Response

import plexa
from plexa.serving import protocol
from plexa.serving.auth import REFUSAL, authorized
from plexa.serving.logs import access, choose_id, request_id
from plexa.serving.metrics import Metrics
from plexa.serving.options import ServeOptions
from plexa.serving.protocol import BadRequest

if TYPE_CHECKING:
    import numpy as np
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from plexa.serving.batching import Batcher
    from plexa.serving.model import ServedModel
    from plexa.serving.targets import Target

log = logging.getLogger("plexa.serving")
STATIC = Path(__file__).parent / "static"
PUBLIC_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})


class State:
    """The models of one app, their batchers, readiness and metrics."""

    def __init__(self, targets: list[Target], options: ServeOptions) -> None:
        self.targets, self.options = targets, options
        self.models: dict[str, ServedModel] = {}
        self.batchers: dict[str, Batcher] = {}
        self.ready = False
        self.load_error: str | None = None
        self.on_load_failure: Callable[[], None] | None = None  # e.g. stop the server
        # other transports' graceful stops (gRPC's): their calls are answered before the
        # batchers end
        self.before_stop: list[Callable[[], Awaitable[None]]] = []
        self.metrics = Metrics()

    def load(self) -> dict[str, ServedModel]:
        """Open and warm up every target (blocking; runs in a thread)."""
        from plexa.serving.model import load

        models: dict[str, ServedModel] = {}
        for target in self.targets:
            model = load(target.path, target.name, target.source, self.options.threads)
            if not model.name:
                model.name = model.metadata.get("pipeline") or "model"
            if model.name in models:
                raise ValueError(
                    f"two models are named '{model.name}' ({models[model.name].source} and "
                    f"{target.source}); serve one as OTHER_NAME={target.source}"
                )
            seconds = model.warm_up()
            log.info("loaded %s from %s, warmed up in %.3fs", model.name, target.source, seconds)
            models[model.name] = model
        return models

    async def start(self) -> None:
        from plexa.serving.batching import Batcher

        try:
            models = await asyncio.to_thread(self.load)
        except Exception as exc:
            self.load_error = str(exc)
            log.error("not ready: %s", exc)
            if self.on_load_failure is not None:
                self.on_load_failure()
            raise
        if self.options.batching:
            for name, model in models.items():
                batcher = Batcher(
                    model,
                    self.options.max_batch,
                    self.options.max_wait_ms / 1000,
                    self.metrics.batch(name),
                )
                batcher.start()
                self.batchers[name] = batcher
        self.models = models
        self.ready = True
        log.info("ready: %s", ", ".join(models))

    async def stop(self) -> None:
        self.ready = False
        await asyncio.gather(*(stop() for stop in self.before_stop))
        for batcher in self.batchers.values():
            await batcher.stop()
        log.info("stopped: every request in flight was answered")

    def require_ready(self) -> None:
        if not self.ready:
            raise BadRequest("the server is still loading its models", 503)

    def model(self, name: str) -> ServedModel:
        self.require_ready()
        if name not in self.models:
            raise BadRequest(f"unknown model '{name}' (serving: {', '.join(self.models)})", 404)
        return self.models[name]

    async def run(self, model: ServedModel, feeds: dict[str, np.ndarray], rows: int):
        if model.name in self.batchers:
            return await self.batchers[model.name].submit(feeds, rows)
        outputs = await asyncio.to_thread(model.run, feeds)
        self.metrics.batch(model.name)(rows)
        return outputs


def create_app(targets: list[Target], options: ServeOptions | None = None) -> FastAPI:
    """The ASGI app serving `targets` (resolved by plexa.serving.targets)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    options = options or ServeOptions()
    state = State(targets, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if options.background_load:
            task = asyncio.get_running_loop().create_task(state.start())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        else:
            await state.start()
        yield
        await state.stop()

    app = _App(
        title="plexa serve",
        version=plexa.__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.plexa = state

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> Response:
        return _error(str(exc), exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if exc.status_code != 404 else f"no route {request.url.path}"
        return _error(str(detail), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return _error(f"invalid request: {exc.errors()}", 400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("request failed")
        return _error(f"internal error; request id {request_id.get()}", 500)

    _routes(app, state)
    return app


class _App(FastAPI):
    """FastAPI with plexa's gate and infer path outermost: the protocol's hot path skips
    Starlette's error and exception middleware and routing; every other route goes through
    them as usual."""

    def build_middleware_stack(self) -> ASGIApp:
        state = self.state.plexa
        return Gate(InferPath(super().build_middleware_stack(), state), state)


def _routes(app: FastAPI, state: State) -> None:
    from fastapi.responses import FileResponse, JSONResponse

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        if state.ready:
            return JSONResponse({"ready": True})
        body: dict[str, Any] = {"ready": False}
        if state.load_error:
            body["error"] = state.load_error
        return JSONResponse(body, status_code=503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "plexa", "version": plexa.__version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models")
    async def models() -> dict[str, Any]:
        state.require_ready()
        return {"models": [m.describe() for m in state.models.values()]}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "1") -> dict[str, Any]:
        return state.model(name).describe()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "1") -> dict[str, Any]:
        return {"name": state.model(name).name, "ready": True}

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        state.require_ready()
        parsed = protocol.parse_json(await request.body())
        model, x = protocol.parse_predict(parsed, state.models)
        (output, *_) = await state.run(model, {model.inputs[0].name: x}, len(x))
        return JSONResponse({"model": model.name, "predictions": model.readable(output)})

    @app.post("/sample")
    async def sample(request: Request) -> Response:
        import numpy as np

        state.require_ready()
        parsed = protocol.parse_json(await request.body())
        model, n, seed = protocol.parse_sample(parsed, state.models)
        assert model.latent_shape is not None
        rng = np.random.default_rng(seed)
        latent = rng.standard_normal((n, *model.latent_shape)).astype(model.inputs[0].dtype)
        (output, *_) = await state.run(model, {model.inputs[0].name: latent}, n)
        low, high = model.value_range or (float(output.min()), float(output.max()))
        return JSONResponse(
            {
                "model": model.name,
                "seed": seed,
                "shape": list(output.shape[1:]),
                "value_range": [low, high],  # what black and white are, for display
                "samples": output.astype(np.float64).tolist(),
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        content, kind = state.metrics.exposition()
        return Response(content, media_type=kind)

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")


def _error(message: str, status: int) -> Response:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def route_of(path: str) -> str:
    """A bounded metrics label: the route template, not the raw path."""
    if path.startswith("/v2/models/"):
        rest = path[len("/v2/models/") :].split("/")
        suffix = rest[-1] if len(rest) > 1 and rest[-1] in ("infer", "ready") else ""
        return "/v2/models/{name}" + (f"/{suffix}" if suffix else "")
    known = {
        "/",
        "/v2",
        "/v2/models",
        "/v2/health/live",
        "/v2/health/ready",
        "/predict",
        "/sample",
        "/metrics",
    }
    return path if path in known else "other"


_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")


class InferPath:
    """`POST /v2/models/{name}[/versions/{v}]/infer` as plain ASGI: the protocol's hot path,
    without FastAPI's routing, request object and dependency machinery (a third of a small
    model's per-request time). Everything else goes on to FastAPI."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _INFER.match(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _error("method not allowed; POST to infer", 405)(scope, receive, send)
            return
        try:
            model = self.state.model(match.group(1))
            batcher = self.state.batchers.get(model.name)
            if batcher is not None:
                batcher.arriving += 1  # the batcher may wait for this one
            try:
                body = await _read_body(receive)
                header = None
                for key, value in scope["headers"]:
                    if key == b"inference-header-content-length":
                        header = value.decode("latin-1")
                parsed = protocol.parse_infer(body, header, model)
            finally:
                if batcher is not None:
                    batcher.arriving -= 1
            outputs = await self.state.run(model, parsed.feeds, parsed.rows)
            content, extra = protocol.infer_response(
                model, parsed, dict(zip(model.output_names, outputs, strict=True))
            )
        except BadRequest as exc:
            await _error(str(exc), exc.status)(scope, receive, send)
            return
        except _TooLarge:
            raise
        except Exception:
            log.exception("request failed")
            await _error(f"internal error; request id {request_id.get()}", 500)(
                scope, receive, send
            )
            return
        kind = b"application/octet-stream" if extra else b"application/json"
        headers = [(b"content-type", kind), (b"content-length", str(len(content)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away before sending the whole body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class _TooLarge(Exception):
    pass


class Gate:
    """Pure ASGI middleware: request id, bearer token, body size limit, metrics, access log."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app, self.state = app, state
        self.token = state.options.token.encode() if state.options.token else None
        self.limit = state.options.max_body_bytes
        identity = f"{socket.gethostname()}:{os.getpid()}".encode()
        self.extra = [(b"x-plexa-replica", identity)] if state.options.identify else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers: dict[bytes, bytes] = dict(scope["headers"])  # names arrive in lower case
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = choose_id(given)
        token = request_id.set(rid)
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                extra = [*self.extra, (b"x-request-id", rid.encode())]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        route = route_of(scope["path"])
        metrics = self.state.metrics
        metrics.begin(route)
        try:
            refusal = self._refuse(scope["path"], headers)
            if refusal is not None:
                await _error(*refusal)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive_limited, send_with_id)
        except _TooLarge:
            if not response_started:
                await _error(self._too_large(), 413)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            metrics.end(route, status, seconds)
            line = f"{rid} {scope['method']} {scope['path']} {status} {seconds * 1e3:.1f}ms"
            access(log, rid, line)
            request_id.reset(token)

    def _refuse(self, path: str, headers: dict[bytes, bytes]) -> tuple[str, int] | None:
        if (
            self.token is not None
            and path not in PUBLIC_PATHS
            and not authorized(headers.get(b"authorization", b""), self.token)
        ):
            return REFUSAL, 401
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return self._too_large(), 413
        return None

    def _too_large(self) -> str:
        return f"request body is larger than the limit of {self.limit} bytes"
