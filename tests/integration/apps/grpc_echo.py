"""A gRPC test backend: unary method /echo.Echo/Say answers "<replica>: <request>".

Raw bytes in and out (no generated code), served over plaintext HTTP/2 on $PORT.
"""

from __future__ import annotations

import os
from concurrent import futures

import grpc

REPLICA = os.environ.get("PILOTFISH_REPLICA", "grpc-echo").encode()


def say(request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = dict(context.invocation_metadata())
    if metadata.get("x-fail") == "unavailable":
        context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
    return REPLICA + b": " + request


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
