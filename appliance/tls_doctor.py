"""``mtcp-appliance doctor``'s HTTPS checks, one line each (``appliance.doctor.Check``):
for the default certificate and every SNI certificate, that the pair loads (key matches
the certificate), the validity period (FAIL when expired or not yet valid, warn within
``EXPIRY_WARN_DAYS`` days), the chain (``openssl verify`` with the file's intermediates
against the system's trust store), that the names served with it are covered by its
subjectAltName, and the OCSP staple's status and freshness. Only the ``ssl`` module and
the ``openssl`` command: no other dependency."""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from appliance.config import Config
from appliance.doctor import Check
from appliance.http.tls import CertError, CertPair, cert_info, make_context, name_matches

EXPIRY_WARN_DAYS = 14
_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----\r?\n?", re.DOTALL
)


def _openssl(*args: str) -> tuple[int, str]:
    try:
        r = subprocess.run(
            ["openssl", *args], capture_output=True, text=True, timeout=20, check=False
        )
    except FileNotFoundError:
        return 127, "the openssl command is not installed (apt-get install openssl)"
    except subprocess.TimeoutExpired:
        return 124, "openssl timed out"
    return r.returncode, (r.stdout + r.stderr).strip()


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def covers(cert_names: tuple[str, ...], name: str) -> bool:
    """Whether a certificate with these DNS names is valid for ``name`` (a wildcard name
    is covered only by the same wildcard)."""
    low = name.lower().rstrip(".")
    if low.startswith("*."):
        return low in (n.lower() for n in cert_names)
    return any(name_matches(n, low) for n in cert_names)


def _chain(pair: CertPair) -> Check:
    data = pair.cert.read_bytes()
    blocks = _PEM_BLOCK.findall(data)
    with tempfile.TemporaryDirectory() as tmp:
        leaf = Path(tmp) / "leaf.pem"
        leaf.write_bytes(blocks[0])
        args = ["verify"]
        if len(blocks) > 1:
            inter = Path(tmp) / "intermediates.pem"
            inter.write_bytes(b"".join(blocks[1:]))
            args += ["-untrusted", str(inter)]
        code, out = _openssl(*args, str(leaf))
    extra = f" ({len(blocks) - 1} intermediate(s) in the file)" if len(blocks) > 1 else ""
    if code == 0:
        return Check("ok", f"{pair.cert}: the chain verifies to a trusted root{extra}")
    reason = out.splitlines()[-1] if out else f"openssl verify exited {code}"
    m = re.search(r"error \d+ at \d+ depth lookup: (.+)", out)
    if m:
        reason = m.group(1)
    fix = (
        "put the intermediate certificates after the leaf in the cert file (a private CA: "
        "make sure the clients trust it)"
    )
    return Check(
        "warn",
        f"{pair.cert}: the chain does not verify against the system's trust store{extra}: {reason}",
        fix,
    )


def _staple(path: Path) -> Check:
    code, out = _openssl("ocsp", "-respin", str(path), "-resp_text", "-noverify")
    if code != 0:
        return Check("FAIL", f"{path}: not a readable OCSP response: {out.splitlines()[-1:]}")
    status = re.search(r"Cert Status: (\w+)", out)
    nxt = re.search(r"Next Update: (.+)", out)
    if status is None or status.group(1) != "good":
        return Check(
            "FAIL",
            f"{path}: the OCSP response says {status.group(1) if status else 'nothing'}",
            "fetch a fresh response: openssl ocsp -issuer CHAIN -cert CERT -url URL "
            f"-respout {path}",
        )
    if nxt is not None:
        try:
            when = datetime.strptime(nxt.group(1).strip(), "%b %d %H:%M:%S %Y %Z")
            if when.replace(tzinfo=UTC).timestamp() < time.time():
                return Check(
                    "warn",
                    f"{path}: the OCSP response is stale (next update {nxt.group(1).strip()})",
                    f"fetch a fresh response into {path} (it is reloaded when it changes)",
                )
        except ValueError:
            pass
    return Check(
        "ok", f"{path}: OCSP staple good" + (f", next update {nxt.group(1)}" if nxt else "")
    )


def _pair_checks(pair: CertPair, names: list[str], now: float) -> list[Check]:
    out: list[Check] = []
    try:
        info = cert_info(pair.cert)
    except CertError as exc:
        return [Check("FAIL", str(exc), "give the PEM certificate chain (leaf first)")]
    try:
        make_context(pair)
        out.append(Check("ok", f"{pair.cert} and {pair.key} load; the key matches"))
    except CertError as exc:
        out.append(Check("FAIL", str(exc), "give the private key that belongs to the certificate"))
    days = (info.not_after - now) / 86400
    if info.not_before > now:
        out.append(Check("FAIL", f"{pair.cert}: not valid before {_day(info.not_before)}"))
    elif days < 0:
        out.append(Check("FAIL", f"{pair.cert}: expired on {_day(info.not_after)}", "renew it"))
    elif days < EXPIRY_WARN_DAYS:
        out.append(
            Check(
                "warn",
                f"{pair.cert}: expires in {days:.1f} days ({_day(info.not_after)})",
                "renew it; the appliance reloads the files when they change",
            )
        )
    else:
        out.append(
            Check("ok", f"{pair.cert}: valid until {_day(info.not_after)} ({days:.0f} days)")
        )
    out.append(_chain(pair))
    missing = [n for n in names if not covers(info.names, n)]
    if missing:
        out.append(
            Check(
                "FAIL",
                f"{pair.cert}: does not cover {', '.join(missing)} "
                f"(it names {', '.join(info.names)})",
                "get a certificate whose subjectAltName lists those names",
            )
        )
    else:
        what = f"covers {', '.join(names)}" if names else f"names {', '.join(info.names)}"
        out.append(Check("ok", f"{pair.cert}: {what}"))
    if pair.ocsp_staple is not None:
        out.append(_staple(pair.ocsp_staple))
    return out


def tls_checks(cfg: Config, now: float | None = None) -> list[Check]:
    """The HTTPS checks (none without tls_port)."""
    if cfg.tls_port is None or cfg.cert is None or cfg.key is None:
        return []
    now = time.time() if now is None else now
    # names served with the default certificate: those of virtual hosts without their own
    own = {name for name, *_ in cfg.sni}
    default_names = [
        n.strip().lower().rstrip(".")
        for t in getattr(cfg, "sites", ())
        if "cert" not in t
        for n in t.get("server_names", [])
        if isinstance(n, str) and n.strip().lower().rstrip(".") not in own
    ]
    out = _pair_checks(CertPair(cfg.cert, cfg.key, cfg.ocsp_staple), default_names, now)
    by_pair: dict[CertPair, list[str]] = {}
    for name, cert, key, staple in cfg.sni:
        by_pair.setdefault(CertPair(cert, key, staple), []).append(name)
    for pair, names in by_pair.items():
        out += _pair_checks(pair, names, now)
    return out
