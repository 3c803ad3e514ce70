"""Federated learning with Flower: partitioning by the core, strategies, the ServerApp and
ClientApp, and SuperLink/SuperNode processes for deployment mode. The runner that assembles
them is `plexa.runners.federated`."""
