"""TLS for botd's clients: the one place that builds a client's ``ssl.SSLContext`` and the one
place that says, in words, why a TLS handshake failed.

- :func:`client_context`: verify the server against a CA file instead of the system's
  bundle (``BOT_CA_FILE``, ``--ca-file``), and present a client certificate
  (``BOT_TLS_CERT``/``BOT_TLS_KEY``); raises :class:`~botd.errors.ConfigError` naming the
  setting whose file is missing, unreadable or not PEM;
- :func:`plain_http_context`: the context of a client whose URL is ``http://`` (it never
  opens TLS, so it loads no CA bundle: ~50 ms at every start; it trusts nothing, so a
  redirect to https would fail closed);
- :func:`explain`: a sentence for a TLS failure found in an exception's chain
  (httpx.ConnectError <- httpcore <- trio.BrokenResourceError <- ssl.SSLError), or None.

It is in the shared layer: the bot's client (:mod:`botd.client`), the producer's
(:mod:`botd.admin_client`) and ``botd conformance`` use it alike.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs

from .errors import ConfigError

__all__ = ["Trust", "client_context", "explain", "find_ssl_error", "plain_http_context"]

#: X509 verify codes (OpenSSL's ``X509_V_ERR_*``) and what each says of the server.
_NAME_MISMATCH = frozenset({62, 64})  # the host name, the IP address
_EXPIRED = 10
_NOT_YET_VALID = 9
_UNTRUSTED = frozenset({2, 18, 19, 20, 21})  # no issuer, self-signed, unable to get issuer


@attrs.frozen
class Trust:
    """Where a client's TLS settings came from, for its messages.

    ``ca`` names the CA file's setting and path (``BOT_CA_FILE=/etc/botd/ca.pem``), or is
    None for the system's bundle; ``cert`` names the client certificate's setting, or None.
    ``cert_hint`` says how to give one (for a server that requires it).
    """

    ca: str | None = None
    cert: str | None = None
    cert_hint: str = "give a client certificate"

    @property
    def ca_text(self) -> str:
        return self.ca if self.ca is not None else "the system's CA bundle"


def _readable(path: Path, where: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read {str(path)!r}: {exc.strerror or exc}; fix the path"
        ) from None
    except ValueError:  # a NUL in the path: no file can have that name
        raise ConfigError(f"{where}: {str(path)!r} holds a NUL character; fix the path") from None


def client_context(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    names: tuple[str, str, str] = ("BOT_CA_FILE", "BOT_TLS_CERT", "BOT_TLS_KEY"),
) -> ssl.SSLContext:
    """A client context: ``ca_file``'s CAs only (the system's bundle when None), and the
    client certificate ``cert_file`` with its key ``key_file`` (or the key in ``cert_file``).

    ``names`` name the three settings in errors. Raises ConfigError naming the setting of a
    file that cannot be read or holds no usable PEM, or a key given without a certificate.
    """
    ca_name, cert_name, key_name = names
    for path, where in ((ca_file, ca_name), (cert_file, cert_name), (key_file, key_name)):
        if path is not None:
            _readable(path, where)
    if key_file is not None and cert_file is None:
        raise ConfigError(f"{key_name}: needs {cert_name} (the certificate of that key)")
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{ca_name}: {str(ca_file)!r} holds no PEM CA certificate ({exc})"
        ) from None
    if cert_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{cert_name}/{key_name}: {str(cert_file)!r} is not a PEM certificate with"
                f" its key ({exc.reason or exc})"
            ) from None
    return context


def plain_http_context() -> ssl.SSLContext:
    """The context of an ``http://`` client: it loads no CA and trusts none (fails closed)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` in ``exc``'s chain of causes and contexts, or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def explain(exc: BaseException, trust: Trust) -> str | None:
    """Which TLS check failed, in words, if ``exc`` came from one; else None.

    The server's certificate: not signed by a CA in ``trust.ca`` (or the system's bundle),
    not naming the host, expired; the client's: required by the server and not given, or
    refused by it.
    """
    found = find_ssl_error(exc)
    if found is None:
        return None
    if isinstance(found, ssl.SSLCertVerificationError):
        code = found.verify_code
        detail = f"certificate verify failed: {found.verify_message}"
        if code in _NAME_MISMATCH:
            return f"TLS: the server's certificate is not valid for this host name ({detail})"
        if code in (_EXPIRED, _NOT_YET_VALID):
            return f"TLS: the server's certificate is out of its validity period ({detail})"
        if code in _UNTRUSTED:
            return (
                f"TLS: the server's certificate is not signed by a CA in {trust.ca_text} ({detail})"
            )
        return (
            f"TLS: the server's certificate failed verification against {trust.ca_text} ({detail})"
        )
    reason = (found.reason or "").upper()
    if "CERTIFICATE_REQUIRED" in reason:
        return f"TLS: the server requires a client certificate: {trust.cert_hint} ({found})"
    if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
        mine = trust.cert or "the client certificate"
        return f"TLS: the server refused {mine} ({found})"
    return f"TLS: the handshake failed ({found})"
