"""`plexa serve`: ONNX exports behind the Open Inference Protocol v2, with dynamic batching.

`serve()` is what the CLI calls: resolve the targets, then run one uvicorn server (or a Ray
Serve deployment with `ray=True`). Heavy imports stay inside the functions.
"""

from __future__ import annotations

from plexa.errors import RunFailed
from plexa.serving.logs import configure_logging
from plexa.serving.options import ServeOptions
from plexa.serving.targets import Target, TargetError, resolve_all

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
) -> None:
    """Serve until interrupted; SIGTERM / Ctrl-C let in-flight requests finish first."""
    options = options or ServeOptions()
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
    server = uvicorn.Server(config)

    def give_up() -> None:  # a file that does not load: stop rather than never become ready
        server.should_exit = True

    app.state.plexa.on_load_failure = give_up
    server.run()
    if app.state.plexa.load_error:
        raise ServeError(app.state.plexa.load_error)
