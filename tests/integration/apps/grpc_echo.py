"""A gRPC test backend: unary method /echo.Echo/Say answers "<replica>: <request>".

Raw bytes in and out (no generated code), served over plaintext HTTP/2 on $PORT. With
``FAIL_FIRST=N`` (env) the first N calls fail with UNAVAILABLE and every answer ends with
" (call K)", so a test sees how many attempts a call took.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent import futures

import grpc

REPLICA = os.environ.get("PILOTFISH_REPLICA", "grpc-echo").encode()
FAIL_FIRST = os.environ.get("FAIL_FIRST")
_calls = itertools.count(1)
_calls_lock = threading.Lock()


def say(request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = dict(context.invocation_metadata())
    if metadata.get("x-fail") == "unavailable":
        context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
    if FAIL_FIRST is None:
        return REPLICA + b": " + request
    with _calls_lock:
        call = next(_calls)
    if call <= int(FAIL_FIRST):
        context.abort(grpc.StatusCode.UNAVAILABLE, f"call {call} of the first {FAIL_FIRST} fails")
    return REPLICA + b": " + request + f" (call {call})".encode()


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
