"""A stand-in for Google Secret Manager: its gRPC service's AccessSecretVersion, served on a loopback port
from a dict of secret versions, with this process's Kafka clients pointed at it.

Secret Manager has no emulator, so this is the one service of the tests that is not the real thing:
the client and its protocol are (google-cloud-secret-manager over gRPC, the request and response
messages of the service), the server behind them is these few lines.
"""
from __future__ import annotations

import concurrent.futures

import grpc

from transforms import kafka

_SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"


class SecretManagerStandIn:
    """``with SecretManagerStandIn({"projects/p/secrets/s/versions/1": b"value"}):`` for the block."""

    def __init__(self, versions: dict[str, bytes]):
        self._versions = versions
        self.accessed: list[str] = []  # the names asked for, in order

    def __enter__(self) -> SecretManagerStandIn:
        from google.cloud import secretmanager

        def access(request, context):
            self.accessed.append(request.name)
            if request.name not in self._versions:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Secret Version [{request.name}] not found.")
            return secretmanager.AccessSecretVersionResponse(
                name=request.name, payload=secretmanager.SecretPayload(data=self._versions[request.name]))

        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {
            "AccessSecretVersion": grpc.unary_unary_rpc_method_handler(
                access, request_deserializer=secretmanager.AccessSecretVersionRequest.deserialize,
                response_serializer=secretmanager.AccessSecretVersionResponse.serialize)}),))
        address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()
        transport = secretmanager.SecretManagerServiceClient.get_transport_class("grpc")
        self._saved = kafka._secret_manager_client
        kafka._secret_manager_client = lambda module: module.SecretManagerServiceClient(
            transport=transport(channel=grpc.insecure_channel(address)))
        kafka._secret_version.cache_clear()
        return self

    def __exit__(self, *exc) -> None:
        kafka._secret_manager_client = self._saved
        kafka._secret_version.cache_clear()
        self._server.stop(0)
