"""How the CLI's clients reach a gateway over TLS: the CA bundle they trust (a private CA) and
the certificate they present for mutual TLS, from `--ca-file/--cert/--key` or `$MLO_CA_BUNDLE`,
`$MLO_CLIENT_CERT`, `$MLO_CLIENT_KEY`; and a handshake's failure said as what to give.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from ml_offload.errors import ConfigError

CA_BUNDLE_ENV = "MLO_CA_BUNDLE"
CLIENT_CERT_ENV = "MLO_CLIENT_CERT"
CLIENT_KEY_ENV = "MLO_CLIENT_KEY"

_TRUST = f"give --ca-file (or ${CA_BUNDLE_ENV}) with the CA that signed it"
_NAME = "use --url with the name the certificate is for"
_PRESENT = f"give --cert and --key (or ${CLIENT_CERT_ENV} and ${CLIENT_KEY_ENV})"
# OpenSSL's reasons for a server's refusal of our certificate (or of its absence)
_REFUSED = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE", "BAD_CERTIFICATE", "UNKNOWN_CA")


@dataclass(frozen=True, slots=True)
class ClientTls:
    ca_file: Path | None = None  # trust this bundle instead of the system's
    cert_file: Path | None = None  # present this certificate (PEM; may hold its key too)
    key_file: Path | None = None

    @property
    def given(self) -> bool:
        return any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))

    def verify(self, *, check_hostname: bool = True) -> ssl.SSLContext | bool:
        """httpx's `verify`: True (the system's trust store) unless a file is given.
        `check_hostname=False` still checks the chain (the daemon's readiness probe of its own
        child on loopback, whose certificate names the public address)."""
        if not self.given and check_hostname:
            return True
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError(f"--key (${CLIENT_KEY_ENV}) needs --cert (${CLIENT_CERT_ENV})")
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--ca-file (${CA_BUNDLE_ENV}) {self.ca_file}: {_reason(exc)}; "
                "give a PEM bundle of CA certificates"
            ) from None
        ctx.check_hostname = check_hostname
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"--cert/--key (${CLIENT_CERT_ENV}, ${CLIENT_KEY_ENV}) {self.cert_file}: "
                    f"{_reason(exc)}; give a PEM certificate and its PEM private key"
                ) from None
        return ctx


def explain(exc: BaseException, url: str, tls: ClientTls | None = None) -> str | None:
    """What to give when `exc` (from httpx) is a TLS failure reaching `url` with `tls`; None
    when it is not one. A server (uvicorn's asyncio TLS) that refuses a client certificate, or
    its absence, closes the connection without a word: over https that is taken as mutual TLS."""
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or _reason(cause)
            if "hostname" in why.lower() or "IP address mismatch" in why:
                return f"the gateway's certificate is not for {url} ({why}): {_NAME}"
            return (
                f"the gateway at {url} has a certificate this client does not trust ({why}): "
                f"{_TRUST}"
            )
        if isinstance(cause, ssl.SSLError) and any(r in str(cause) for r in _REFUSED):
            return _refused(url, tls)
    import httpx  # here: `mlo serve` reads this module's names, and needs no httpx (~4 MB)

    if isinstance(exc, httpx.RemoteProtocolError) and url.startswith("https://"):
        return _refused(url, tls)
    return None


def _refused(url: str, tls: ClientTls | None) -> str:
    if tls is None or tls.cert_file is None:
        return (
            f"the gateway at {url} closed the connection: it requires a client certificate "
            f"(mutual TLS); {_PRESENT}"
        )
    return (
        f"the gateway at {url} refused the client certificate {tls.cert_file} (mutual TLS): "
        "give one issued by the CA it trusts (--cert, --key)"
    )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    for cause in list(seen):  # httpx/httpcore keep the ssl error among the args sometimes
        seen += [a for a in cause.args if isinstance(a, BaseException)]
    return seen


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__
