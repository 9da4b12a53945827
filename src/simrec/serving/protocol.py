"""uvicorn's HTTP protocol with its protocol-level errors in simrec's JSON shape.

A request that is not valid HTTP (an illegal header byte, a malformed request line) never
reaches the ASGI guard: uvicorn answers it with a plain-text 400. These subclasses answer it
with `{"error_code", "message"}` instead, like every other error of the server.
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A fixed body: the parser's message may quote the offending bytes back.
_BODY = b'{"error_code": "BAD_REQUEST", "message": "the request is not valid HTTP/1.1"}'


def _write_400(transport) -> None:
    transport.write(
        b"HTTP/1.1 400 Bad Request\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + _BODY
    )
    transport.close()


class JsonErrorsHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        _write_400(self.transport)


class JsonErrorsH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        _write_400(self.transport)
