"""httpx's exceptions into botd's errors, for the bot's client: :func:`map_transport_errors`
is the one place that translates them (the admin client has its own, ``botd.admin_client``).

A timeout, a refused connection, a DNS failure or a broken connection is
:class:`ServerUnavailable` (retryable); a failed TLS check is :class:`TlsFailure`, which
says which check failed (:func:`botd.tls.explain`); a connection closed right after it
opened over https says what that may mean (a client certificate the server wants).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from . import tls
from .errors import ServerUnavailable, TlsFailure

__all__ = ["DEFAULT_TRUST", "map_transport_errors"]

#: The trust of a bot that has no TLS settings: the system's CA bundle, no client certificate.
DEFAULT_TRUST = tls.Trust(cert_hint="set BOT_TLS_CERT and BOT_TLS_KEY")
#: What a connection closed right after it opened may mean over https (TLS 1.3 reports a
#: refused client certificate as a closed connection on the first read).
_CLOSED_TLS_HINT = (
    " (over https, a server that requires a client certificate closes the connection like"
    " this when it gets none, or one it does not trust: {})"
)


@contextmanager
def map_transport_errors(endpoint: str, trust: tls.Trust | None = None) -> Iterator[None]:
    """Translate httpx's exceptions into :class:`ServerUnavailable`; the one place that does.

    A failed TLS check is :class:`TlsFailure`, saying which check failed against ``trust``
    (the CA file and the client certificate in use).
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServerUnavailable(f"{endpoint}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        trust = trust or DEFAULT_TRUST
        explained = tls.explain(exc, trust)
        if explained is not None:
            raise TlsFailure(f"{endpoint}: {explained}") from None
        # ConnectError covers refused connections and DNS failures; the message says which.
        message = f"{endpoint}: {type(exc).__name__}: {exc or 'no detail'}"
        https = exc.request.url.scheme == "https" if _has_request(exc) else False
        if https and isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            message += _CLOSED_TLS_HINT.format(
                f"is {trust.cert} right?" if trust.cert else trust.cert_hint
            )
        raise ServerUnavailable(message) from None


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request  # noqa: B018 (httpx raises RuntimeError when the error has none)
    except RuntimeError:
        return False
    return True
