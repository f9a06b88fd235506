"""TLS 1.3 contexts with mutual authentication against the market root and CRL.

OpenSSL is the first line: it refuses a missing, foreign, expired or revoked
certificate during the handshake, on both sides. The peer verifier that the channel
calls afterwards is the second (identity, role, our own CRL reading). Two pitfalls:
an ``SSLContext`` cannot drop a CRL once loaded, so a new CRL means new contexts
(``TlsConfig.with_crl``); and ``ssl`` loads CRLs only from a file, so the PEM is
written to a private temporary file for the moment of loading.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from ._errors import HandshakeFailed

__all__ = ["TlsConfig", "describe_tls_failure", "pinned_client_context", "send_pending_alert"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Our certificate and key (files), the market root and the current CRL (PEM)."""

    cert_path: Path
    key_path: Path
    root_pem: bytes
    crl_pem: bytes | None
    password: bytes | None = None

    def with_crl(self, crl_pem: bytes) -> TlsConfig:
        return replace(self, crl_pem=crl_pem)

    def server_context(self) -> ssl.SSLContext:
        ctx = self._context(ssl.PROTOCOL_TLS_SERVER)
        ctx.num_tickets = 0  # no resumption: every connection shows its certificate
        return ctx

    def server_only_context(self) -> ssl.SSLContext:
        """A server context that asks for no client certificate (enrollment only:
        the client has none yet). Never use it for a channel."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _tls13_only(ctx)
        ctx.verify_mode = ssl.CERT_NONE
        ctx.num_tickets = 0
        ctx.load_cert_chain(self.cert_path, self.key_path, password=self._password())
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = self._context(ssl.PROTOCOL_TLS_CLIENT)
        # Agents are named by the SAN URI semper:agent/<id>, checked by the peer
        # verifier, not by a DNS host name.
        ctx.check_hostname = False
        return ctx

    def _context(self, protocol: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(protocol)
        _tls13_only(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(self.cert_path, self.key_path, password=self._password())
        ctx.load_verify_locations(cadata=self.root_pem.decode("ascii"))
        if self.crl_pem is not None:
            _load_crl(ctx, self.crl_pem)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        return ctx

    def _password(self) -> Callable[[], bytes] | None:
        if self.password is None:
            return None
        password = self.password
        return lambda: password


def _tls13_only(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION


def pinned_client_context() -> ssl.SSLContext:
    """A client context with no certificate of its own that does not check the
    server's chain: the caller MUST pin the server's certificate right after the
    handshake (``request_pinned`` does). TLS 1.3's CertificateVerify still proves
    that the server holds the key of the certificate it showed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _tls13_only(ctx)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _load_crl(ctx: ssl.SSLContext, crl_pem: bytes) -> None:
    fd, name = tempfile.mkstemp(prefix="semper-crl-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(crl_pem)
        ctx.load_verify_locations(cafile=name)
    finally:
        os.unlink(name)


# OpenSSL's reasons, as ssl.SSLError.reason, turned into words a user can act on.
_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the peer says our certificate is revoked",
    # OpenSSL sends this alert for a stale CRL on its side too.
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says our certificate has expired "
                                       "(or its own CRL is stale)",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate's issuer",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the peer rejected our certificate",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the peer speaks no TLS version we accept (1.3 only)",
    "UNSUPPORTED_PROTOCOL": "the peer speaks no TLS version we accept (1.3 only)",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS 1.3",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no certificate",
}


def describe_tls_failure(exc: BaseException, *, during: str) -> HandshakeFailed:
    """Turn trio's BrokenResourceError around an SSLError into a HandshakeFailed."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    reason = "connection closed"
    detail: dict[str, object] = {}
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = f"the peer's certificate did not verify: {cause.verify_message}"
        code = getattr(cause, "reason", None) or "CERTIFICATE_VERIFY_FAILED"
        # OpenSSL's X509_V_ERR_* number tells expired (10) from revoked (23) and so on.
        detail = {"verify_code": cause.verify_code, "verify_message": cause.verify_message}
    elif isinstance(cause, ssl.SSLError):
        code = getattr(cause, "reason", None) or cause.__class__.__name__
        reason = _REASONS.get(code, code.lower().replace("_", " "))
    else:
        code = type(cause).__name__ if cause is not None else "EOF"
    return HandshakeFailed(f"TLS failed {during}: {reason}", detail={"reason": code, **detail})


async def send_pending_alert(stream: Any) -> None:
    """Send the alert OpenSSL queued when the handshake failed, so the peer learns why.

    trio raises BrokenResourceError without writing out what is left in the
    SSLStream's outgoing BIO (python-trio/trio#3413), so without this the peer sees
    a bare EOF instead of ``certificate required``/``unknown ca``/... Best effort,
    shielded and bounded; reads trio's private ``_outgoing``.
    """
    own = getattr(stream, "send_pending_alert", None)
    if own is not None:  # our TlsStream knows how
        await own()
        return
    outgoing = getattr(stream, "_outgoing", None)
    pending = outgoing.read() if isinstance(outgoing, ssl.MemoryBIO) else b""
    if not pending:
        return
    # Shield outside, deadline inside: the deadline must still apply.
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.transport_stream.send_all(pending)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
