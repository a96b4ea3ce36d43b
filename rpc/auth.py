"""Authentication and transport security for the tracker and device servers.

Every tracker and device RPC carries a shared token in the ``authorization`` metadata entry
(``Bearer <token>``). A server started with a token rejects a call with a missing or wrong token with
``UNAUTHENTICATED`` before any servicer code runs. A server refuses to start without a token unless it is
started with an explicit ``insecure=True`` (``--insecure`` on the command line).

The token comes from, in order: an explicit value, a file (``--token-file``), the ``KILN_RPC_TOKEN``
environment variable, the file named by ``KILN_RPC_TOKEN_FILE``. Files hold the token on their first line.

TLS is used when certificate files are given (:class:`TLSConfig`): a server needs its certificate and key and,
to require client certificates, a CA bundle to check them against; a client needs the CA bundle that signed
the server certificate and, for mutual TLS, its own certificate and key. Without TLS the token travels in
clear text, which is fine on loopback or a private lab network and nowhere else.
"""

from __future__ import annotations

import collections
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

TOKEN_ENV = "KILN_RPC_TOKEN"
TOKEN_FILE_ENV = "KILN_RPC_TOKEN_FILE"
METADATA_KEY = "authorization"


class AuthError(ValueError):
    """Security settings are missing or invalid (no token and not --insecure, unreadable cert files)."""


def load_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The shared token: explicit value, then token_file, then $KILN_RPC_TOKEN, then $KILN_RPC_TOKEN_FILE."""
    if token:
        return token
    path = token_file or None
    if path is None and os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    if path is None:
        path = os.environ.get(TOKEN_FILE_ENV) or None
    if path is None:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise AuthError(f"cannot read the RPC token file {path}: {e.strerror}") from e
    first = text.splitlines()[0].strip() if text else ""
    if not first:
        raise AuthError(f"the RPC token file {path} is empty")
    return first


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AuthError(f"cannot read the TLS {what} {path}: {e.strerror}") from e


@dataclass(frozen=True)
class TLSConfig:
    """Certificate files (PEM). On a server: ``cert``/``key`` are its own; ``ca`` (optional) checks client
    certificates, which are then required. On a client: ``ca`` checks the server (system roots when None);
    ``cert``/``key`` (optional) are the client certificate for mutual TLS; ``server_name`` overrides the
    name expected in the server certificate."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    server_name: str | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        cert, key = _read(self.cert, "certificate"), _read(self.key, "key")
        if cert is None or key is None:
            raise AuthError("a TLS server needs both a certificate (--tls-cert) and a key (--tls-key)")
        ca = _read(self.ca, "CA bundle")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        cert, key = _read(self.cert, "certificate"), _read(self.key, "key")
        if (cert is None) != (key is None):
            raise AuthError("a TLS client certificate needs both --tls-cert and --tls-key")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA bundle"), private_key=key, certificate_chain=cert
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


# --------------------------------------------------------------------------------------------------- server


def _abort_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that rejects the call with UNAUTHENTICATED."""

    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kw)
    return grpc.unary_unary_rpc_method_handler(deny, **kw)


class TokenInterceptor(grpc.ServerInterceptor):
    """Rejects every call whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        got = None
        for k, v in handler_call_details.invocation_metadata or ():
            if k == METADATA_KEY:
                got = v.encode() if isinstance(v, str) else v
                break
        if got is None:
            return _abort_handler(handler, "missing RPC token: set KILN_RPC_TOKEN or pass --token-file")
        if not hmac.compare_digest(got, self._expected):
            return _abort_handler(handler, "wrong RPC token")
        return handler


@dataclass(frozen=True)
class ServerSecurity:
    """How a server authenticates calls. Build it with :func:`server_security`."""

    token: str | None
    tls: TLSConfig | None = None

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [TokenInterceptor(self.token)] if self.token else []

    def add_port(self, server: grpc.Server, host: str, port: int) -> int:
        """Bind ``host:port`` (port 0: any free port); returns the bound port."""
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = (
            server.add_secure_port(addr, self.tls.server_credentials())
            if self.tls
            else server.add_insecure_port(addr)
        )
        if bound == 0:
            raise OSError(f"cannot listen on {addr}")
        return bound


def server_security(
    token: str | None = None,
    *,
    token_file: str | os.PathLike[str] | None = None,
    insecure: bool = False,
    tls: TLSConfig | None = None,
) -> ServerSecurity:
    """Resolve a server's security settings; refuse to run without a token unless ``insecure``."""
    tok = None if insecure else load_token(token, token_file)
    if tok is None and not insecure:
        raise AuthError(
            f"no RPC token: set {TOKEN_ENV}, set {TOKEN_FILE_ENV} or pass --token-file; "
            "or start with --insecure to accept unauthenticated calls"
        )
    return ServerSecurity(token=tok, tls=tls)


# --------------------------------------------------------------------------------------------------- client


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._entry = (METADATA_KEY, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        md = list(details.metadata or ())
        md.append(self._entry)
        return _CallDetails(
            details.method,
            details.timeout,
            md,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def open_channel(
    address: str,
    *,
    token: str | None = None,
    tls: TLSConfig | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to a kiln server that attaches ``token`` to every call and uses TLS when ``tls`` is given."""
    opts = list(options)
    if tls is not None:
        opts += tls.channel_options()
        channel = grpc.secure_channel(address, tls.channel_credentials(), options=opts)
    else:
        channel = grpc.insecure_channel(address, options=opts)
    if token:
        channel = grpc.intercept_channel(channel, _TokenClientInterceptor(token))
    return channel
