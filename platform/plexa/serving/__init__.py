"""`plexa serve`: ONNX exports behind the Open Inference Protocol v2, with dynamic batching.

`serve()` is what the CLI calls: resolve the targets, then run one uvicorn server (or a Ray
Serve deployment with `ray=True`), with the protocol's gRPC service beside it in the same
event loop when given a `grpc_port`. Heavy imports stay inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plexa.errors import RunFailed, UserError
from plexa.serving.logs import configure_logging
from plexa.serving.options import ServeOptions
from plexa.serving.targets import Target, TargetError, resolve_all

if TYPE_CHECKING:
    import socket

    import uvicorn

    from plexa.serving.grpc_server import GrpcServer

__all__ = [
    "ServeError",
    "ServeOptions",
    "Target",
    "TargetError",
    "configure_logging",
    "resolve_all",
    "serve",
]


class ServeError(RunFailed, RuntimeError):
    """The server could not start serving (a model failed to load)."""


def serve(
    targets: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    options: ServeOptions | None = None,
    ray: bool = False,
    replicas: int = 1,
    tracking_uri: str | None = None,
    grpc_port: int | None = None,
) -> None:
    """Serve until interrupted; SIGTERM / Ctrl-C let in-flight requests finish first."""
    options = options or ServeOptions()
    if ray and grpc_port is not None:
        raise UserError("--grpc-port does not work with --ray (Ray Serve's proxy speaks HTTP)")
    resolved = resolve_all(targets, tracking_uri)
    configure_logging()
    if ray:
        from plexa.serving.ray_serve import serve_on_ray

        serve_on_ray(resolved, host, port, options, replicas)
        return
    import uvicorn

    from plexa.serving.app import create_app

    app = create_app(resolved, options)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,  # Gate writes one line per request, with its id
        timeout_graceful_shutdown=30,
        server_header=False,
        proxy_headers=False,  # nothing reads the client address; X-Forwarded-* would cost a parse
    )
    if grpc_port is None:
        server = uvicorn.Server(config)
    else:
        from plexa.serving.grpc_server import GrpcServer

        grpc_server = GrpcServer(app.state.plexa, host, grpc_port)
        app.state.plexa.before_stop.append(grpc_server.stop)
        server = _with_grpc(config, grpc_server)

    def give_up() -> None:  # a file that does not load: stop rather than never become ready
        server.should_exit = True

    app.state.plexa.on_load_failure = give_up
    try:
        server.run()
    except OSError as exc:  # the gRPC port (uvicorn reports its own and exits)
        raise ServeError(str(exc)) from None
    if app.state.plexa.load_error:
        raise ServeError(app.state.plexa.load_error)


def _with_grpc(config: uvicorn.Config, grpc_server: GrpcServer) -> uvicorn.Server:
    """uvicorn with the gRPC server in its event loop: gRPC listens first, and a shutdown
    (SIGTERM, Ctrl-C, a model that fails to load) stops both at once, each answering what it
    has in flight; the batchers end after both."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await grpc_server.start()
            await super().startup(sockets)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            grpc_server.stop()  # refuses new calls now; the app's shutdown waits for the rest
            await super().shutdown(sockets)

    return Server(config)
