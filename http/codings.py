"""Content codings: which precompressed sibling (``.br``, ``.gz``) of a file answers a
request's Accept-Encoding (RFC 9110 section 12.5.3). Part of the static file service
(site.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.http.site import _File

# (encoding token, file suffix, Content-Encoding), in order of preference at equal q
ENCODINGS = (("br", ".br", b"br"), ("gzip", ".gz", b"gzip"))


def _accepted(value: bytes) -> dict[bytes, float]:
    """Accept-Encoding → {coding: q}."""
    out: dict[bytes, float] = {}
    for item in value.lower().split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip()
        if not coding:
            continue
        q = 1.0
        for p in params.split(b";"):
            k, _, v = p.partition(b"=")
            if k.strip() == b"q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
        out[coding] = q
    return out


def _choose_encoding(base: _File, accept: bytes | None) -> _File:
    """The best precompressed sibling the client accepts (q > 0), else the file itself."""
    if not accept:
        return base
    acc = _accepted(accept)
    star = acc.get(b"*")
    best, best_q = base, 0.0
    for token, _, _ in ENCODINGS:
        v = base.variants.get(token)
        if v is None:
            continue
        q = acc.get(token.encode())
        if q is None and token == "gzip":
            q = acc.get(b"x-gzip")
        if q is None:
            q = star if star is not None else 0.0
        if q > best_q:
            best, best_q = v, q
    if best is base:
        return base
    # identity is always acceptable, but it outranks a listed coding only when it is listed
    # itself with a higher q ("gzip;q=0.5, identity" keeps the file as it is)
    identity_q = acc.get(b"identity")
    return base if identity_q is not None and identity_q > best_q else best
