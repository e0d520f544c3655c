"""A live stream's metrics for Prometheus: ``--metrics_port PORT`` serves ``transforms.live_metrics`` (what the
stream's steps count in this process) and the consumer group's lag, at http://HOST:PORT/metrics while it runs."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable

from apache_beam.options.pipeline_options import PortableOptions
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily

from pipelines import runners
from pipelines.options import KafkaOptions, StreamOptions
from transforms.errors import UserError


def check_port(options) -> None:
    """--metrics_port serves what the Python steps in this process count (``transforms.live_metrics``): where they run
    in other processes it is a one-line error."""
    if not options.view_as(StreamOptions).metrics_port:
        return
    elsewhere = None
    environment = options.view_as(PortableOptions).environment_type
    if options.view_as(KafkaOptions).kafka_io == "beam":
        elsewhere = "with --kafka_io beam, Java reads and writes Kafka"
    elif runners.runner_name(options) == "DataflowRunner":
        elsewhere = "on Dataflow the steps run on its workers (their metrics are in Cloud Monitoring)"
    elif runners.is_flink_cluster(options):
        elsewhere = "on a Flink cluster the steps run in its workers (Flink's own metrics reporters serve them)"
    elif environment and environment.upper() != "LOOPBACK":
        elsewhere = f"with --environment_type {environment} the steps run in workers of their own"
    if elsewhere:
        raise UserError(f"--metrics_port serves what the steps in this process count; {elsewhere}")


class _GroupLag:
    """The consumer group's lag by partition, asked of Kafka at each scrape (``group_positions``)."""

    def __init__(self, positions: Callable[[], dict | None]):
        self._positions = positions

    def describe(self) -> list:
        return []  # (so that registering does not ask Kafka)

    def collect(self):
        lag = GaugeMetricFamily("rtml_consumer_lag_messages", "Messages of the input topic the group has not "
                                "committed (not yet written, or not yet read), by partition", labels=["partition"])
        for partition, (committed, end) in sorted((self._positions() or {}).items()):
            lag.add_metric([str(partition)], end - committed)
        yield lag


@contextlib.contextmanager
def served(port: int, positions: Callable[[], dict | None]):
    """``transforms.live_metrics`` and the group's lag at http://HOST:``port``/metrics while the block runs."""
    if not port:
        yield
        return
    lag = _GroupLag(positions)
    REGISTRY.register(lag)
    try:
        server, _ = start_http_server(port)
    except OSError as error:
        REGISTRY.unregister(lag)
        raise UserError(f"--metrics_port {port}: cannot serve metrics there ({error.strerror or error})") from None
    print(f"metrics for Prometheus at http://localhost:{port}/metrics", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        REGISTRY.unregister(lag)
