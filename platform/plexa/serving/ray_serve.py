"""`plexa serve --ray`: the same app as a Ray Serve deployment with N replicas.

Each replica builds the plexa app itself (models loaded and warmed up before Ray routes to it)
and Ray's HTTP proxy spreads requests over them, so clients see the same protocol. Ray starts
embedded, without its dashboard; the proxy binds the same host as a plain server would.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, cast

from plexa.serving.options import ServeOptions

if TYPE_CHECKING:
    from ray.serve import Deployment

    from plexa.serving.targets import Target

APP_NAME = "plexa"


def deployment_app(targets: list[Target], options: ServeOptions, replicas: int):  # -> Application
    """The bound Ray Serve application (what `serve.run` takes)."""
    from ray import serve

    cores = os.cpu_count() or 1
    replica_options = dataclasses.replace(
        options,
        background_load=False,  # a replica is ready when its constructor returns
        identify=True,
        threads=options.threads or max(1, cores // replicas),  # replicas share the cores
    )

    def build():  # runs on each replica
        from plexa.serving.app import create_app
        from plexa.serving.logs import configure_logging

        configure_logging()
        return create_app(targets, replica_options)

    ingress = serve.ingress(build)()
    # called with the class, serve.deployment returns the Deployment, not the decorator its
    # annotation names
    deployment = cast(
        "Deployment",
        serve.deployment(
            ingress,
            name="plexa-serve",
            num_replicas=replicas,
            ray_actor_options={"num_cpus": 0},  # ONNX Runtime threads are sized above instead
            max_ongoing_requests=256,  # batching needs many requests in flight per replica
        ),
    )
    return deployment.bind()


def serve_on_ray(
    targets: list[Target], host: str, port: int, options: ServeOptions, replicas: int
) -> None:
    """Start embedded Ray and Serve, run the deployment until Ctrl-C / SIGTERM, shut down."""
    import ray
    from ray import serve

    ray.init(address="local", include_dashboard=False, log_to_driver=True)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(
            deployment_app(targets, options, replicas),
            name=APP_NAME,
            route_prefix="/",
            blocking=True,
        )
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
