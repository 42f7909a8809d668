"""HTTPS: TLS 1.3/1.2 around the sans-I/O ``Connection``, with ``ssl.SSLObject`` over
``ssl.MemoryBIO`` (OpenSSL, no new dependency).

The loop drives a ``TlsConnection`` exactly as it drives a plain ``Connection`` (bytes in,
bytes out, ``wants_input``/``has_output``/``closed``/``abort``/``deadline``), so both stack
adapters (``loop.run`` on mtcp_core and on kernel sockets) serve HTTPS the same way:

    received ciphertext → incoming BIO → handshake, or decrypted requests → Connection
    Connection's response bytes → SSLObject.write → outgoing BIO → bytes to send

A large file stays under the loop's flow control: the ``Connection`` hands one
``stream_chunk`` per ``pull``, which is encrypted right then; the next chunk is read from
the file only once the socket took the previous one.

What the ``ssl`` module does not offer is done on the context's own ``SSL_CTX`` through
ctypes (``_OpenSSL``): the Mozilla "intermediate" key-exchange groups and DHE parameters,
session-ticket keys shared by every worker (``SSL_CTX_set_tlsext_ticket_key_evp_cb``; the
supervisor writes the keys to a file and rotates them, so a ticket issued by one core is
accepted by every other) and OCSP stapling (``SSL_CTX_set_tlsext_status_cb``).

``TlsServer`` owns the contexts (one per certificate; SNI picks one by server name) and
reloads them when the files change or on ``request_reload`` (SIGHUP): a certificate or key
that does not load keeps the old contexts and is logged. Connections already established
keep the session they have.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# Mozilla "intermediate" (ssl-config.mozilla.org, guideline 5.7): TLS 1.3 with its default
# suites, TLS 1.2 with these ECDHE/DHE AEAD suites, groups X25519, P-256, P-384, DHE with
# the ffdhe2048 group (OpenSSL's automatic DH parameters), server preference off.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
GROUPS = "X25519:P-256:P-384"
ALPN = ("http/1.1",)
HANDSHAKE_TIMEOUT_S = 10.0  # a ClientHello (and the rest of the handshake) must come by then
CHECK_INTERVAL_S = 1.0  # how often the certificate and ticket-key files are looked at
TICKET_KEY_LEN = 80  # key name 16, HMAC-SHA256 key 32, AES-256-CBC key 32
TICKET_ROTATE_S = 3600.0  # a new ticket key every hour ...
TICKET_KEYS_KEPT = 3  # ... and the two before it still decrypt (OpenSSL's 2 h ticket life)
VERSIONS = ("TLSv1.2", "TLSv1.3")
RESULTS = ("ok", "error", "eof", "timeout")  # handshake results, for the metrics
PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 46\r\n"
    b"Connection: close\r\n\r\nThis port speaks HTTPS: use https:// instead.\n"
)


class CertError(ValueError):
    """A certificate, key or staple file that cannot be used: ``path`` and ``reason``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path
    ocsp_staple: Path | None = None


@dataclass(frozen=True)
class TlsSettings:
    """What ``TlsServer`` needs: the TLS port, the default certificate, certificates by
    server name (SNI; ``*.example.org`` matches one label), the ticket-key file the
    supervisor shares (None: keys of this process only)."""

    port: int
    default: CertPair
    by_name: tuple[tuple[str, CertPair], ...] = ()
    ticket_keys: Path | None = None
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S

    def pairs(self) -> list[CertPair]:
        return [self.default, *(p for _, p in self.by_name)]


class TlsStats(Protocol):
    """Where a worker counts TLS events (``appliance.metrics.tls_block.TlsBlock``)."""

    def handshake(self, version: str, result: str, resumed: bool) -> None: ...
    def reload(self, ok: bool) -> None: ...


# ----------------------------------------------------------------------------- OpenSSL


class _Param(ctypes.Structure):
    """OSSL_PARAM (openssl/core.h)."""

    _fields_ = (
        ("key", ctypes.c_char_p),
        ("data_type", ctypes.c_uint),
        ("data", ctypes.c_void_p),
        ("data_size", ctypes.c_size_t),
        ("return_size", ctypes.c_size_t),
    )


_OSSL_PARAM_UTF8_STRING = 4
_OSSL_PARAM_OCTET_STRING = 5
_SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB = 63
_SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP = 71
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_SET_DH_AUTO = 118
_SSL_TLSEXT_ERR_OK = 0
_SSL_TLSEXT_ERR_NOACK = 3
_V = ctypes.c_void_p
_TICKET_CB = ctypes.CFUNCTYPE(
    ctypes.c_int,
    _V,
    ctypes.POINTER(ctypes.c_ubyte),
    ctypes.POINTER(ctypes.c_ubyte),
    _V,
    _V,
    ctypes.c_int,
)
_STATUS_CB = ctypes.CFUNCTYPE(ctypes.c_int, _V, _V)


def _loaded_library(stem: str) -> str:
    """The path of the libssl/libcrypto that this process's ``_ssl`` module uses."""
    import _ssl  # noqa: F401 - loads the libraries

    with open("/proc/self/maps") as f:
        for line in f:
            path = line.rsplit(" ", 1)[-1].strip()
            if f"/{stem}.so" in path:
                return path
    found = ctypes.util.find_library(stem.removeprefix("lib"))
    if found is None:
        raise OSError(f"{stem} not found")
    return found


class _TicketKey:
    __slots__ = ("name", "aes", "params", "_hmac")

    def __init__(self, raw: bytes) -> None:
        self.name = raw[:16]
        self._hmac = ctypes.create_string_buffer(raw[16:48], 32)
        self.aes = raw[48:80]
        p = (_Param * 3)()
        p[0] = _Param(b"key", _OSSL_PARAM_OCTET_STRING, ctypes.cast(self._hmac, _V), 32, 0)
        p[1] = _Param(b"digest", _OSSL_PARAM_UTF8_STRING, ctypes.cast(_DIGEST, _V), 6, 0)
        self.params = p


_DIGEST = ctypes.create_string_buffer(b"SHA256")


class _OpenSSL:
    """The few OpenSSL calls the ``ssl`` module lacks, on an ``SSLContext``'s ``SSL_CTX``.

    The ``SSL_CTX *`` is the first field after the object header of CPython's
    ``PySSLContext`` (Modules/_ssl.c); ``ctx_ptr`` checks that by reading the context's
    options through OpenSSL and comparing them with ``SSLContext.options``."""

    def __init__(self) -> None:
        self.ssl = ctypes.CDLL(_loaded_library("libssl"))
        self.crypto = ctypes.CDLL(_loaded_library("libcrypto"))
        s, c = self.ssl, self.crypto
        s.SSL_CTX_get_options.restype = ctypes.c_uint64
        s.SSL_CTX_get_options.argtypes = [_V]
        s.SSL_CTX_ctrl.restype = ctypes.c_long
        s.SSL_CTX_ctrl.argtypes = [_V, ctypes.c_int, ctypes.c_long, _V]
        s.SSL_CTX_callback_ctrl.restype = ctypes.c_long
        s.SSL_CTX_callback_ctrl.argtypes = [_V, ctypes.c_int, _V]
        s.SSL_ctrl.restype = ctypes.c_long
        s.SSL_ctrl.argtypes = [_V, ctypes.c_int, ctypes.c_long, _V]
        s.SSL_CTX_set_tlsext_ticket_key_evp_cb.restype = ctypes.c_int
        s.SSL_CTX_set_tlsext_ticket_key_evp_cb.argtypes = [_V, _TICKET_CB]
        c.EVP_aes_256_cbc.restype = _V
        c.EVP_EncryptInit_ex.argtypes = [_V, _V, _V, ctypes.c_char_p, _V]
        c.EVP_DecryptInit_ex.argtypes = [_V, _V, _V, ctypes.c_char_p, _V]
        c.EVP_MAC_CTX_set_params.argtypes = [_V, _V]
        c.RAND_bytes.argtypes = [_V, ctypes.c_int]
        c.CRYPTO_malloc.restype = _V
        c.CRYPTO_malloc.argtypes = [ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int]
        self.aes = c.EVP_aes_256_cbc()
        self.keys: list[_TicketKey] = []  # first: encrypts; all: decrypt
        self._ticket_cb = _TICKET_CB(self._on_ticket)
        self.ticket_errors = 0

    def ctx_ptr(self, ctx: ssl.SSLContext) -> int:
        ptr = _V.from_address(id(ctx) + object.__basicsize__).value
        if not ptr or self.ssl.SSL_CTX_get_options(ptr) != ctx.options:
            raise RuntimeError("cannot find the SSL_CTX of an ssl.SSLContext")
        return ptr

    def set_groups(self, ctx: ssl.SSLContext, groups: str) -> None:
        buf = ctypes.create_string_buffer(groups.encode())
        if self.ssl.SSL_CTX_ctrl(self.ctx_ptr(ctx), _SSL_CTRL_SET_GROUPS_LIST, 0, buf) != 1:
            raise RuntimeError(f"OpenSSL refused the groups {groups}")

    def set_dh_auto(self, ctx: ssl.SSLContext) -> None:
        self.ssl.SSL_CTX_ctrl(self.ctx_ptr(ctx), _SSL_CTRL_SET_DH_AUTO, 1, None)

    # session tickets ---------------------------------------------------------------

    def use_ticket_keys(self, ctx: ssl.SSLContext) -> None:
        ok = self.ssl.SSL_CTX_set_tlsext_ticket_key_evp_cb(self.ctx_ptr(ctx), self._ticket_cb)
        if ok != 1:
            raise RuntimeError("OpenSSL refused the session ticket callback")

    def set_keys(self, raw: bytes) -> None:
        n = len(raw) // TICKET_KEY_LEN
        if n == 0 or len(raw) % TICKET_KEY_LEN:
            raise ValueError(f"ticket keys: {len(raw)} bytes is not a multiple of 80")
        self.keys = [
            _TicketKey(raw[i * TICKET_KEY_LEN : (i + 1) * TICKET_KEY_LEN]) for i in range(n)
        ]

    def _on_ticket(self, _ssl: int, name: Any, iv: Any, cctx: int, hctx: int, enc: int) -> int:
        """OpenSSL's ticket key callback (called inside the handshake, GIL taken by
        ctypes): encrypt with the first key; decrypt with the key the ticket names, asking
        for a fresh ticket (2) when that key is not the newest."""
        try:
            keys = self.keys
            c = self.crypto
            if enc:
                k = keys[0]
                ctypes.memmove(name, k.name, 16)
                if c.RAND_bytes(iv, 16) != 1:
                    return -1
                if c.EVP_EncryptInit_ex(cctx, self.aes, None, k.aes, iv) != 1:
                    return -1
                return 1 if c.EVP_MAC_CTX_set_params(hctx, k.params) == 1 else -1
            wanted = ctypes.string_at(name, 16)
            for i, k in enumerate(keys):
                if k.name == wanted:
                    if c.EVP_MAC_CTX_set_params(hctx, k.params) != 1:
                        return -1
                    if c.EVP_DecryptInit_ex(cctx, self.aes, None, k.aes, iv) != 1:
                        return -1
                    return 1 if i == 0 else 2
            return 0  # unknown key: a full handshake
        except Exception:  # noqa: BLE001 - never raise into OpenSSL
            self.ticket_errors += 1
            return -1

    # OCSP stapling -----------------------------------------------------------------

    def staple(self, ctx: ssl.SSLContext, response: bytes | None) -> None:
        """Staples ``response`` (a DER OCSP response) to every handshake that asks for the
        certificate's status; None: no stapling."""
        ptr = self.ctx_ptr(ctx)
        if response is None:
            return
        data = bytes(response)
        c, s = self.crypto, self.ssl

        def on_status(ssl_ptr: int, _arg: int) -> int:
            try:
                buf = c.CRYPTO_malloc(len(data), b"tls.py", 0)  # OpenSSL frees it
                if not buf:
                    return _SSL_TLSEXT_ERR_NOACK
                ctypes.memmove(buf, data, len(data))
                s.SSL_ctrl(ssl_ptr, _SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP, len(data), buf)
                return _SSL_TLSEXT_ERR_OK
            except Exception:  # noqa: BLE001 - never raise into OpenSSL
                return _SSL_TLSEXT_ERR_NOACK

        cb = _STATUS_CB(on_status)
        s.SSL_CTX_callback_ctrl(ptr, _SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB, ctypes.cast(cb, _V))
        ctx._mtcp_status_cb = cb  # type: ignore[attr-defined]  # lives as long as the SSL_CTX


_openssl: _OpenSSL | None = None
_openssl_lock = threading.Lock()


def openssl() -> _OpenSSL:
    global _openssl
    with _openssl_lock:
        if _openssl is None:
            _openssl = _OpenSSL()
        return _openssl


# ----------------------------------------------------------------------------- files


def new_ticket_keys(old: bytes = b"") -> bytes:
    """A fresh key first, then the newest of the old ones (TICKET_KEYS_KEPT in all)."""
    keep = old[: (TICKET_KEYS_KEPT - 1) * TICKET_KEY_LEN]
    return os.urandom(TICKET_KEY_LEN) + keep


def write_ticket_keys(path: Path, keys: bytes) -> None:
    """Writes the key file atomically (readers see the old or the new keys, never half)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, keys)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(path, f"{what}: no such file") from None
    except IsADirectoryError:
        raise CertError(path, f"{what}: is a folder, not a file") from None
    except OSError as exc:
        raise CertError(path, f"{what}: cannot read it: {exc.strerror}") from None


_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----")


@dataclass(frozen=True)
class CertInfo:
    """What the leaf certificate says: DNS names (SAN, else the CN), validity, issuer."""

    path: str
    names: tuple[str, ...]
    not_before: float
    not_after: float
    subject: str
    issuer: str
    chain_length: int  # certificates in the file (leaf + intermediates)


def cert_info(path: Path) -> CertInfo:
    """Reads the first certificate of a PEM file (the ssl module's own decoder)."""
    data = _read(path, "certificate")
    if _PEM_CERT not in data:
        raise CertError(path, "certificate: no PEM certificate in the file")
    try:
        d = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError) as exc:
        raise CertError(path, f"certificate: cannot be parsed ({_ssl_reason(exc)})") from None
    names = tuple(v for k, v in d.get("subjectAltName", ()) if k == "DNS")
    cn = [v for rdn in d.get("subject", ()) for k, v in rdn if k == "commonName"]
    if not names and cn:
        names = (cn[0],)

    def dn(seq: Any) -> str:
        return ", ".join(f"{k}={v}" for rdn in seq for k, v in rdn)

    return CertInfo(
        path=str(path),
        names=names,
        not_before=ssl.cert_time_to_seconds(d["notBefore"]),
        not_after=ssl.cert_time_to_seconds(d["notAfter"]),
        subject=dn(d.get("subject", ())),
        issuer=dn(d.get("issuer", ())),
        chain_length=data.count(_PEM_CERT),
    )


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def check_staple(path: Path) -> bytes:
    """The staple file's bytes: a DER OCSP response (a SEQUENCE), not PEM."""
    data = _read(path, "OCSP staple")
    if not data or data[0] != 0x30:
        raise CertError(path, "OCSP staple: not a DER-encoded OCSP response")
    return data


def make_context(pair: CertPair, sni: Callable[..., Any] | None = None) -> ssl.SSLContext:
    """A server context with the project's TLS policy and ``pair`` loaded; a file that
    cannot be used raises CertError naming it and why."""
    info = cert_info(pair.cert)
    key = _read(pair.key, "key")
    m = _PEM_KEY.search(key)
    if m is None:
        raise CertError(pair.key, "key: no PEM private key in the file")
    if m.group(1) == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in key:
        raise CertError(pair.key, "key: encrypted with a passphrase (store it unencrypted)")
    staple = check_staple(pair.ocsp_staple) if pair.ocsp_staple is not None else None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(list(ALPN))
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION

    def no_password() -> bytes:
        raise CertError(pair.key, "key: encrypted with a passphrase (store it unencrypted)")

    try:
        ctx.load_cert_chain(str(pair.cert), str(pair.key), password=no_password)
    except ssl.SSLError as exc:
        reason = str(exc.reason or "")
        if "MISMATCH" in reason:
            raise CertError(pair.key, f"key: does not match the certificate {pair.cert}") from None
        lib = str(exc.library or "")
        if "PEM" in lib or "PEM" in reason or "DECODER" in lib:
            raise CertError(pair.key, f"key: cannot be parsed ({_ssl_reason(exc)})") from None
        raise CertError(pair.cert, f"cannot be used ({_ssl_reason(exc)})") from None
    if not info.names:
        raise CertError(pair.cert, "certificate: names no host (no DNS subjectAltName or CN)")
    o = openssl()
    o.set_groups(ctx, GROUPS)
    o.set_dh_auto(ctx)
    o.use_ticket_keys(ctx)
    o.staple(ctx, staple)
    if sni is not None:
        ctx.sni_callback = sni
    return ctx


def name_matches(pattern: str, host: str) -> bool:
    """RFC 6125 section 6.4.3 in its common form: ``*.example.org`` covers one label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


# ----------------------------------------------------------------------------- server


def _log(level: str, msg: str) -> None:
    try:
        from appliance.logs import log

        getattr(log, level)(msg)
    except Exception:  # noqa: BLE001 - outside the appliance (a test, a library user)
        print(f"appliance.http.tls: {msg}", file=sys.stderr)


class TlsServer:
    """One worker's TLS side: contexts (default + by name), ticket keys, reloads."""

    def __init__(self, settings: TlsSettings, stats: TlsStats | None = None) -> None:
        self.settings = settings
        self.stats = stats
        self._reload_requested = False
        self._next_check = 0.0
        self._stamps = self._file_stamps()
        self._keys_stamp: tuple[int, int] | None = None
        self._load_ticket_keys()
        self.context, self._named = self._build()  # CertError at start: the caller's
        self.generation = 0

    # -- building --------------------------------------------------------------------

    def _build(self) -> tuple[ssl.SSLContext, list[tuple[str, ssl.SSLContext]]]:
        s = self.settings
        named = [(name, make_context(pair)) for name, pair in s.by_name]
        default = make_context(s.default, sni=self._on_sni if named else None)
        return default, named

    def _on_sni(self, obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if not name:
            return None
        for pattern, ctx in self._named:
            if name_matches(pattern, name):
                obj.context = ctx
                return None
        return None

    def _file_stamps(self) -> tuple[tuple[int, int], ...]:
        out = []
        for pair in self.settings.pairs():
            for p in (pair.cert, pair.key, pair.ocsp_staple):
                if p is None:
                    continue
                try:
                    st = os.stat(p)
                    out.append((st.st_mtime_ns, st.st_ino))
                except OSError:
                    out.append((-1, -1))
        return tuple(out)

    def _load_ticket_keys(self) -> None:
        o = openssl()
        path = self.settings.ticket_keys
        if path is None:
            if not o.keys:
                o.set_keys(new_ticket_keys())
            return
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_ino)
            if stamp == self._keys_stamp:
                return
            o.set_keys(path.read_bytes())
            self._keys_stamp = stamp
        except (OSError, ValueError) as exc:
            _log("warning", f"session ticket keys {path}: {exc}; keeping the current ones")
            if not o.keys:
                o.set_keys(new_ticket_keys())

    # -- reloading -------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload at the next ``tick`` (safe from a signal handler)."""
        self._reload_requested = True

    def tick(self, now: float) -> None:
        """Called once per loop round: reloads when asked to or when a file changed."""
        if now < self._next_check and not self._reload_requested:
            return
        self._next_check = now + CHECK_INTERVAL_S
        self._load_ticket_keys()
        stamps = self._file_stamps()
        if stamps == self._stamps and not self._reload_requested:
            return
        why = "SIGHUP" if self._reload_requested else "the files changed"
        self._reload_requested = False
        self._stamps = stamps
        self.reload(why)

    def reload(self, why: str = "reload") -> bool:
        """New contexts for new connections; on an error the old ones stay (logged)."""
        try:
            self.context, self._named = self._build()
        except CertError as exc:
            _log("error", f"TLS reload ({why}) failed, keeping the old certificates: {exc}")
            if self.stats is not None:
                self.stats.reload(False)
            return False
        self.generation += 1
        _log("info", f"TLS certificates reloaded ({why}), generation {self.generation}")
        if self.stats is not None:
            self.stats.reload(True)
        return True

    # -- connections -----------------------------------------------------------------

    def wrap(self, http: Any, now: float) -> TlsConnection:
        return TlsConnection(self, http, now)

    def _record(self, version: str, result: str, resumed: bool) -> None:
        if self.stats is not None:
            with contextlib.suppress(Exception):
                self.stats.handshake(version, result, resumed)


class TlsConnection:
    """A ``Connection`` behind TLS, with the same caller's API (see connection.py)."""

    __slots__ = (
        "http",
        "server",
        "_in",
        "_out",
        "_obj",
        "_ready",
        "_failed",
        "_notified",
        "_counted",
        "_deadline",
        "_broken",
    )

    def __init__(self, server: TlsServer, http: Any, now: float) -> None:
        self.http = http
        self.server = server
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = server.context.wrap_bio(self._in, self._out, server_side=True)
        self._ready = False  # handshake done
        self._failed = False  # handshake failed: send what OpenSSL wrote (an alert), close
        self._notified = False  # close_notify written
        self._counted = False
        self._deadline = now + server.settings.handshake_timeout_s
        self._broken = False  # OpenSSL refused a write after the handshake: drop it

    # -- state the loop reads --------------------------------------------------------

    @property
    def wants_input(self) -> bool:
        if self._failed:
            return False
        return self.http.wants_input if self._ready else True

    @property
    def has_output(self) -> bool:
        if self._failed:
            return self._out.pending > 0
        if not self._ready:
            return self._out.pending > 0
        h = self.http
        return self._out.pending > 0 or h.has_output or (h.closed and not self._notified)

    @property
    def closed(self) -> bool:
        return self._failed or (self._ready and self.http.closed)

    @property
    def abort(self) -> bool:
        return self._broken or self._ready and self.http.abort

    @property
    def deadline(self) -> float:
        return self.http.deadline if self._ready else self._deadline

    @property
    def config(self) -> Any:
        return self.http.config

    @property
    def unread_input(self) -> bool:
        """The request being answered may still be arriving (see Connection.unread_input):
        a lingering close keeps the client's kernel from being reset."""
        return self._ready and not self._in.eof and self.http.unread_input

    @property
    def peer_closed(self) -> bool:
        return self._in.eof or (self._ready and self.http.peer_closed)

    @property
    def version(self) -> str | None:
        return self._obj.version() if self._ready else None

    @property
    def session_reused(self) -> bool:
        return self._ready and self._obj.session_reused

    @property
    def selected_alpn(self) -> str | None:
        return self._obj.selected_alpn_protocol() if self._ready else None

    # -- the caller's API ------------------------------------------------------------

    def receive(self, data: bytes, now: float | None = None) -> bytes:
        now = time.monotonic() if now is None else now
        if self._failed or self._broken or self._in.eof:
            return b""
        if self._ready and (self.http.closed or self.http.abort):
            return b""
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        out = b""
        if not self._ready:
            if not self._handshake(now):
                return self._out.read()
            out = self._out.read()
        plain, eof = self._read_plain()
        resp = self.http.receive(plain, now) if plain else b""
        if eof:
            resp += self.http.receive(b"", now)
        return out + self._encrypt(resp)

    def pull(self, now: float | None = None) -> bytes:
        now = time.monotonic() if now is None else now
        if not self._ready or self._failed:
            return self._out.read()
        resp = self.http.pull(now) if self.http.has_output else b""
        return self._encrypt(resp)

    def timer(self, now: float | None = None) -> bytes:
        now = time.monotonic() if now is None else now
        if not self._ready:
            if now >= self._deadline and not self._failed:
                self._count("timeout")
                self._failed = True
            return b""
        return self._encrypt(self.http.timer(now))

    def drain(self, now: float | None = None) -> None:
        if not self._ready:
            if not self._failed:
                self._failed = True  # no request yet: nothing to finish
            return
        self.http.drain(now)

    def close(self, now: float | None = None) -> None:
        if not self._ready and not self._counted:
            self._count("eof")  # reset or closed during the handshake
        self.http.close(now)

    # -- the engine ------------------------------------------------------------------

    def _handshake(self, now: float) -> bool:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self._count("eof")
            self._failed = True
            return False
        except (ssl.SSLError, OSError) as exc:
            self._count("error")
            self._failed = True
            if isinstance(exc, ssl.SSLError) and exc.reason == "HTTP_REQUEST":
                self._out.write(PLAIN_HTTP_ON_TLS)  # nginx's 400 for http:// on this port
            return False
        self._ready = True
        self._count("ok")
        return True

    def _count(self, result: str) -> None:
        if self._counted:
            return
        self._counted = True
        if result == "ok":
            self.server._record(self._obj.version() or "-", "ok", self._obj.session_reused)
        else:
            self.server._record("-", result, False)

    def _read_plain(self) -> tuple[bytes, bool]:
        """Every request byte the received records hold; True once the peer closed
        (close_notify, or the TCP stream ended)."""
        parts: list[bytes] = []
        eof = False
        obj = self._obj
        while True:
            try:
                chunk = obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True
                break
            except ssl.SSLError:
                eof = True  # a broken record: what came before it is still answered
                break
            if not chunk:
                eof = True
                break
            parts.append(chunk)
            if not self._in.pending and not obj.pending():
                if self._in.eof:
                    eof = True
                break
        return b"".join(parts), eof

    def _encrypt(self, resp: bytes) -> bytes:
        obj = self._obj
        if resp and not self._broken:
            view = memoryview(resp)
            try:
                while view:
                    n = obj.write(view)
                    view = view[n:]
            except (ssl.SSLError, OSError):
                self._broken = True  # e.g. the peer's fatal alert: nothing more goes out
                return self._out.read()
        h = self.http
        if h.closed and not h.has_output and not self._notified and not h.abort:
            self._notified = True
            with contextlib.suppress(ssl.SSLError, OSError):
                obj.unwrap()  # close_notify; the peer's is not awaited
        return self._out.read()


def openssl_cli(*args: str, data: bytes | None = None, timeout: float = 10.0) -> tuple[int, str]:
    """Runs the ``openssl`` command (doctor checks); (status, stdout + stderr)."""
    try:
        r = subprocess.run(
            ["openssl", *args], input=data, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        return 127, "the openssl command is not installed"
    except subprocess.TimeoutExpired:
        return 124, "openssl timed out"
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")
