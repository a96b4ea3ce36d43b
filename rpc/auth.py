"""Authentication, identities and transport security for the tracker and device servers.

Tokens and identities
=====================

Every tracker and device RPC carries a token in the ``authorization`` metadata entry (``Bearer <token>``).
A server maps the token to an :class:`Identity`: a name, a role and a priority cap. Two ways to configure it:

- one shared token (``--token-file``, ``$KILN_RPC_TOKEN``, ``$KILN_RPC_TOKEN_FILE``): every holder is the
  identity ``farm`` with the ``admin`` role. The whole farm is then one trust domain: lease ids are still
  secrets of their holders, but any holder may register devices and ask for any priority.
- a tokens file (``--tokens FILE``, :func:`load_tokens_file`): a TOML file mapping the sha256 of each token
  to a name (a person, a team, a CI system), a role (``client``: lease and use devices; ``admin``: also
  register and unregister device servers, see every lease) and ``max_priority``. The file holds hashes only,
  so it can be copied to every device server; ``kiln token NAME`` makes a token and its entry.

A call with a missing, unknown or wrong token is refused with ``UNAUTHENTICATED`` by
:class:`TokenInterceptor` before the request message is received or parsed (the refusal reads no request
bytes). A server refuses to start without any token unless started with ``insecure=True`` (``--insecure``),
and refuses ``--insecure`` together with a token (it would silently ignore it). Tokens are stripped of
surrounding whitespace; an empty or whitespace-only token is an error, never "no authentication".

The token comes from, in order: an explicit value, a file (``--token-file``), the ``KILN_RPC_TOKEN``
environment variable, the file named by ``KILN_RPC_TOKEN_FILE``. Files hold the token on their first line.

TLS
===

TLS is used when certificate files are given (:class:`TLSConfig`): a server needs its certificate and key and,
to require client certificates, a CA bundle to check them against; a client needs the CA bundle that signed
the server certificate and, for mutual TLS, its own certificate and key. Without TLS the token travels in
clear text, which is fine on loopback or a private lab network and nowhere else.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

TOKEN_ENV = "KILN_RPC_TOKEN"
TOKEN_FILE_ENV = "KILN_RPC_TOKEN_FILE"
METADATA_KEY = "authorization"
LEASE_METADATA_KEY = "kiln-lease"
ROLES = ("client", "admin")
MAX_PRIORITY = 1000  # priorities are clamped to [-MAX_PRIORITY, MAX_PRIORITY]
SHARED_NAME = "farm"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")


class AuthError(ValueError):
    """Security settings are missing or invalid (no token and not --insecure, unreadable cert files)."""


@dataclass(frozen=True)
class Identity:
    """Who a call comes from: ``name`` (shown as the lease holder, owns leases and uploaded packages),
    ``role`` (``client`` or ``admin``) and the highest queue priority it may ask for."""

    name: str
    role: str = "client"
    max_priority: int = 0

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Identity("anonymous", "admin", MAX_PRIORITY)  # every caller of an --insecure server


def _clean_token(value: str, where: str) -> str:
    tok = value.strip()
    if not tok:
        raise AuthError(f"the RPC token from {where} is empty (or only whitespace); set a real token")
    if any(c.isspace() for c in tok) or not tok.isprintable():
        raise AuthError(f"the RPC token from {where} contains whitespace or control characters")
    return tok


def load_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The token: explicit value, then token_file, then $KILN_RPC_TOKEN, then $KILN_RPC_TOKEN_FILE. None when
    none is set; :class:`AuthError` when the one that is set is empty or unreadable."""
    if token is not None:
        return _clean_token(token, "the caller")
    path = token_file or None
    if path is None and os.environ.get(TOKEN_ENV) is not None:
        return _clean_token(os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
    if path is None:
        path = os.environ.get(TOKEN_FILE_ENV) or None
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise AuthError(f"cannot read the RPC token file {path}: {e.strerror}") from e
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first:
        raise AuthError(f"the RPC token file {path} is empty")
    return _clean_token(first, f"the token file {path}")


def token_digest(token: str) -> str:
    """The sha256 (hex) of a token, as a tokens file lists it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(24)


def load_tokens_file(path: str | os.PathLike[str]) -> dict[str, Identity]:
    """A tokens file -> {sha256 of token: Identity}. Format (TOML)::

    [tokens.alice]                 # the identity's name
    sha256 = "5e88...d8"           # sha256 hex of the token (`kiln token alice` prints both)
    role = "client"                # client (default) | admin
    max_priority = 0               # highest priority it may ask for (default 0; admin: 1000)
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise AuthError(f"cannot read the tokens file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise AuthError(f"the tokens file {path} is not valid TOML: {e}") from e
    table = data.get("tokens")
    if not isinstance(table, dict) or not table:
        raise AuthError(f"the tokens file {path} has no [tokens.NAME] entries")
    out: dict[str, Identity] = {}
    for name, entry in table.items():
        where = f"{path}: [tokens.{name}]"
        if not _NAME_RE.match(name):
            raise AuthError(f"{where}: a name is 1-64 letters, digits or _.@+-")
        if not isinstance(entry, dict):
            raise AuthError(f"{where} must be a table")
        unknown = set(entry) - {"sha256", "role", "max_priority"}
        if unknown:
            raise AuthError(f"{where}: unknown keys {sorted(unknown)}")
        digest = str(entry.get("sha256", "")).lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise AuthError(f"{where}: sha256 must be the 64 hex digits of the token's sha256")
        role = entry.get("role", "client")
        if role not in ROLES:
            raise AuthError(f"{where}: role must be one of {', '.join(ROLES)}, not {role!r}")
        cap = entry.get("max_priority", MAX_PRIORITY if role == "admin" else 0)
        if not isinstance(cap, int) or not -MAX_PRIORITY <= cap <= MAX_PRIORITY:
            raise AuthError(f"{where}: max_priority must be an integer in [-{MAX_PRIORITY}, {MAX_PRIORITY}]")
        if digest in out:
            raise AuthError(f"{where}: the same token is listed for {out[digest].name!r}")
        out[digest] = Identity(name, role, cap)
    return out


_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]+ )?PRIVATE KEY-----")


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AuthError(f"cannot read the TLS {what} {path}: {e.strerror}") from e


def _check_pair(cert: bytes, key: bytes, cert_path: object, key_path: object) -> None:
    cert_is_key, key_is_cert = bool(_PEM_KEY.search(cert)), _PEM_CERT in key
    if cert_is_key and key_is_cert:
        raise AuthError(
            f"the TLS certificate and key are swapped: {cert_path} holds a private key and {key_path} a "
            "certificate; pass the certificate to --tls-cert and the key to --tls-key"
        )
    if _PEM_CERT not in cert:
        raise AuthError(f"{cert_path} is not a PEM certificate (no '-----BEGIN CERTIFICATE-----')")
    if not _PEM_KEY.search(key):
        raise AuthError(f"{key_path} is not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----')")


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
        _check_pair(cert, key, self.cert, self.key)
        ca = _read(self.ca, "CA bundle")
        if ca is not None and _PEM_CERT not in ca:
            raise AuthError(f"{self.ca} is not a PEM CA bundle (no '-----BEGIN CERTIFICATE-----')")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        cert, key = _read(self.cert, "certificate"), _read(self.key, "key")
        if (cert is None) != (key is None):
            raise AuthError("a TLS client certificate needs both --tls-cert and --tls-key")
        if cert is not None and key is not None:
            _check_pair(cert, key, self.cert, self.key)
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA bundle"), private_key=key, certificate_chain=cert
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


# --------------------------------------------------------------------------------------------------- server


def _ignore_request(data: bytes) -> None:
    return None


def _deny_handler(message: str) -> grpc.RpcMethodHandler:
    """A handler that refuses the call with UNAUTHENTICATED without receiving its request: a request-streaming
    handler that never iterates its requests (gRPC then reads no message), whatever the method's shape."""

    def deny(request_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.stream_unary_rpc_method_handler(deny, request_deserializer=_ignore_request)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose ``authorization`` metadata is not ``Bearer <a known token>``, before the method
    is even looked up and before its request is received."""

    def __init__(self, identities: Mapping[str, Identity]) -> None:
        if not identities:
            raise AuthError("a token interceptor needs at least one token")
        self._identities = dict(identities)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        ident = identify(handler_call_details.invocation_metadata, self._identities)
        if ident is None:
            got = _bearer(handler_call_details.invocation_metadata)
            if got is None:
                return _deny_handler("missing RPC token: set KILN_RPC_TOKEN or pass --token-file")
            return _deny_handler("wrong RPC token")
        return continuation(handler_call_details)


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for k, v in metadata or ():
        if k == METADATA_KEY:
            v = v.decode(errors="replace") if isinstance(v, bytes) else v
            return v[7:] if v.startswith("Bearer ") else ""
    return None


def identify(
    metadata: Sequence[tuple[str, Any]] | None, identities: Mapping[str, Identity]
) -> Identity | None:
    """The identity whose token the call carries, or None."""
    tok = _bearer(metadata)
    if not tok:
        return None
    return identities.get(_digest(tok))


@functools.lru_cache(maxsize=256)
def _digest(token: str) -> str:  # the hot path hashes the same few tokens over and over
    return token_digest(token)


@dataclass(frozen=True)
class ServerSecurity:
    """How a server authenticates calls. Build it with :func:`server_security`. ``token`` is a shared token
    (identity ``farm``, admin); ``identities`` maps token digests to identities (a tokens file);
    ``insecure`` serves everyone as ``anonymous`` and must be asked for explicitly."""

    token: str | None
    tls: TLSConfig | None = None
    identities: Mapping[str, Identity] = field(default_factory=dict)
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.token is not None:
            _clean_token(self.token, "the server's settings")
        if self.insecure and (self.token is not None or self.identities):
            raise AuthError("--insecure and a token were both given; drop one")
        if not self.insecure and self.token is None and not self.identities:
            raise AuthError("a server needs a token (or a tokens file) unless it is started with --insecure")

    def all_identities(self) -> dict[str, Identity]:
        out = dict(self.identities)
        if self.token is not None:
            out.setdefault(token_digest(self.token.strip()), Identity(SHARED_NAME, "admin", MAX_PRIORITY))
        return out

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [] if self.insecure else [TokenInterceptor(self.all_identities())]

    def identify(self, context: grpc.ServicerContext) -> Identity:
        """The identity of an accepted call (the interceptor already refused unknown tokens)."""
        if self.insecure:
            return ANONYMOUS
        ident = identify(context.invocation_metadata(), self._table)
        if ident is None:  # pragma: no cover - the interceptor refuses such calls first
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown RPC token")
        return ident

    @property
    def _table(self) -> dict[str, Identity]:
        t = self.__dict__.get("_table_cache")
        if t is None:
            t = self.all_identities()
            object.__setattr__(self, "_table_cache", t)
        return t

    def add_port(self, server: grpc.Server, host: str, port: int) -> int:
        """Bind ``host:port`` (port 0: any free port); returns the bound port."""
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = (
                server.add_secure_port(addr, self.tls.server_credentials())
                if self.tls
                else server.add_insecure_port(addr)
            )
        except RuntimeError as e:
            raise OSError(
                f"cannot listen on {addr}: {e}; is the port in use, or the TLS key not the certificate's?"
            ) from e
        if bound == 0:
            raise OSError(f"cannot listen on {addr} (the port is in use, or the address is not this host's)")
        return bound


def server_security(
    token: str | None = None,
    *,
    token_file: str | os.PathLike[str] | None = None,
    tokens_file: str | os.PathLike[str] | None = None,
    insecure: bool = False,
    tls: TLSConfig | None = None,
) -> ServerSecurity:
    """Resolve a server's security settings: a shared token and/or a tokens file; refuse to run without
    either unless ``insecure``, and refuse ``insecure`` together with a token."""
    tok = load_token(token, token_file)
    identities = load_tokens_file(tokens_file) if tokens_file is not None else {}
    if insecure:
        if tok is not None or identities:
            src = "a tokens file" if identities else "a token (explicit, --token-file or $KILN_RPC_TOKEN)"
            raise AuthError(
                f"--insecure was given together with {src}: an insecure server would silently ignore it; "
                "drop --insecure to require the token, or unset the token"
            )
        return ServerSecurity(token=None, tls=tls, insecure=True)
    if tok is None and not identities:
        raise AuthError(
            f"no RPC token: set {TOKEN_ENV}, set {TOKEN_FILE_ENV}, pass --token-file or --tokens; "
            "or start with --insecure to accept unauthenticated calls"
        )
    return ServerSecurity(token=tok, tls=tls, identities=identities)


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
    grpc.UnaryStreamClientInterceptor,
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

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
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
