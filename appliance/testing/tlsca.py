"""A test certificate authority made with the ``openssl`` command (this module holds no
tests): ``CA(folder).issue(name, dns=[...], ips=[...])`` writes a leaf certificate and its
key (ECDSA P-256 unless ``rsa``), signed by the CA; ``ca.cert`` is what clients trust."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path


def openssl(*args: str, cwd: Path | None = None, data: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["openssl", *args], capture_output=True, cwd=cwd, input=data, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path

    def spki_sha256(self) -> str:
        """base64(SHA-256(SubjectPublicKeyInfo)), as Chromium's
        --ignore-certificate-errors-spki-list wants it."""
        der = openssl("x509", "-in", str(self.cert), "-noout", "-pubkey")
        spki = openssl("pkey", "-pubin", "-outform", "DER", data=der)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class CA:
    def __init__(self, folder: Path, name: str = "mtcp-appliance test CA") -> None:
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert = folder / "ca.pem"
        self.key = folder / "ca.key"
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", "30", "-nodes",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        self._serial = 1

    def issue(
        self,
        name: str,
        dns: list[str] | None = None,
        ips: list[str] | None = None,
        *,
        days: int = 20,
        rsa: bool = False,
        tag: str = "",
    ) -> Leaf:
        """A leaf for ``dns`` (default [name]) and ``ips``, valid for ``days`` from now."""
        stem = f"{name}{tag}"
        key, csr, cert = (self.dir / f"{stem}{s}" for s in (".key", ".csr", ".pem"))
        if rsa:
            openssl("genrsa", "-out", str(key), "2048")
        else:
            openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
        openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        san = ",".join([f"DNS:{d}" for d in (dns or [name])] + [f"IP:{i}" for i in ips or []])
        ext = self.dir / f"{stem}.ext"
        ext.write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        self._serial += 1
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(self._serial), "-out", str(cert), "-extfile", str(ext),
            "-days", str(days),
        )  # fmt: skip
        return Leaf(cert, key)
