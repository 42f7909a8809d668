"""Site rules: redirects, rewrites and response headers, compiled once, matched per request.

The syntax is Netlify's and Cloudflare Pages': a ``_redirects`` file at the site root, one
rule a line::

    # from                 [query conditions]  to                      [status][!]
    /home                                      /                       301
    /news/:year/:month/*                       /blog/:year-:month/:splat 308
    /store                 id=:id              /products/:id           302
    /app/*                                     /app/index.html         200
    /legacy/*                                  /gone.html              404!
    https://old.example/*                      https://new.example/:splat 301

and a ``_headers`` file: a path pattern on a line of its own, then indented ``Name: value``
lines (or ``! Name`` to remove a header a broader block or the server's defaults set)::

    /*
      X-Frame-Options: DENY
    /assets/*
      Cache-Control: public, max-age=31536000, immutable

The same rules can come from the TOML configuration (``[[redirects]] from/to/status/force/
query`` and ``[[headers]] for/values``, Netlify's ``netlify.toml`` names); file rules come
first. Patterns: ``*`` (once, anywhere; ``/x/*`` also matches ``/x``) and whole-segment
``:name`` placeholders, both usable in the target (``:splat``, ``:name``) and in header
values. A trailing slash does not matter for matching. The first matching redirect wins;
every matching header block applies, in order (a header named in two blocks gets both
values, joined by ", "), and the result replaces the server's default header of the same
name (``Cache-Control``) or adds to them.

Shadowing (Netlify's): a rule applies only where the site has nothing at the path (the file
service answered 404) unless it is forced (``!``, ``force = true``).

Everything here is parsed and compiled by ``compile_rules``; a mistake raises ``RuleError``
with the file, the line and the reason. Matching never compiles anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
REWRITE_STATUSES = frozenset((200, 404, 410))
STATUSES = REDIRECT_STATUSES | REWRITE_STATUSES
DEFAULT_STATUS = 301  # Netlify's default
MAX_RULES = 10_000
MAX_MEMO = 4096  # paths whose header operations are remembered
REDIRECTS_FILE = "_redirects"
HEADERS_FILE = "_headers"
# header fields the server owns: framing, the connection, the date
FORBIDDEN_HEADERS = frozenset(
    (
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "date",
        "content-range",
        "content-encoding",
        "upgrade",
        "trailer",
    )
)
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REF = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
_SAFE_PATH = "/:@!$&'()*+,;=~"
_SAFE_SEGMENT = ":@!$&'()*+,;=~"


class RuleError(ValueError):
    """A rule that cannot be compiled: where (file and line, or config key) and why."""

    def __init__(self, where: str, line: int | None, reason: str) -> None:
        self.where, self.line, self.reason = where, line, reason
        at = f"{where}:{line}" if line is not None else where
        super().__init__(f"{at}: {reason}")


@dataclass(frozen=True)
class Pattern:
    """A compiled path pattern (``/news/:year/*``), optionally for one host."""

    source: str
    host: str | None  # lower case; None: any host
    regex: re.Pattern[str] | None  # None: an exact path (``exact``)
    exact: str  # the path (trailing slash removed) when regex is None
    names: tuple[str, ...]  # placeholders, "splat" included when there is a "*"

    def match(self, path: str) -> dict[str, str] | None:
        """Placeholder values for a path (trailing slash already removed), or None."""
        if self.regex is None:
            return {} if path == self.exact else None
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        return {k: v or "" for k, v in m.groupdict().items()}


@dataclass(frozen=True)
class Redirect:
    pattern: Pattern
    to: str  # as written: a path (maybe with a query) or an absolute URL
    status: int
    force: bool
    query: tuple[tuple[str, str], ...]  # (parameter, literal value or ":name")
    where: str  # "file:line", for messages

    @property
    def rewrite(self) -> bool:
        return self.status in REWRITE_STATUSES


@dataclass(frozen=True)
class HeaderRule:
    pattern: Pattern
    set: tuple[tuple[str, str], ...]  # (Name, value), in order
    remove: tuple[str, ...]  # lower-case names
    where: str


@dataclass(frozen=True)
class Match:
    """A redirect that applies to a request: the rule and its target, encoded (bytes, as a
    request target or a Location value)."""

    rule: Redirect
    target: bytes


@dataclass
class RuleSet:
    """Compiled rules of one site. ``match`` and ``header_ops`` are what requests use."""

    redirects: tuple[Redirect, ...] = ()
    headers: tuple[HeaderRule, ...] = ()
    spa_fallback: str | None = None  # a path of the site ("/index.html")
    sources: tuple[str, ...] = ()  # where the rules came from, for messages
    _exact: dict[str, int] = field(default_factory=dict, repr=False)
    _dynamic: list[int] = field(default_factory=list, repr=False)
    _memo: dict[tuple[str, str | None], tuple[tuple[str, str], ...] | None] = field(
        default_factory=dict, repr=False
    )
    _hdr_memo: dict[tuple[str, str | None], HeaderOps] = field(default_factory=dict, repr=False)
    empty: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        # nothing to do for any request (an attribute: read on every request)
        self.empty = not (self.redirects or self.headers or self.spa_fallback)
        for i, r in enumerate(self.redirects):
            p = r.pattern
            if p.regex is None and p.host is None and not r.query:
                self._exact.setdefault(p.exact, i)
            else:
                self._dynamic.append(i)

    @property
    def has_forced(self) -> bool:
        return any(r.force for r in self.redirects)

    def match(self, path: str, query: bytes | None, host: str | None) -> Match | None:
        """The first redirect rule matching a request's decoded path, query and host."""
        if not self.redirects:
            return None
        key = strip_slash(path)
        first = self._exact.get(key, len(self.redirects))
        for i in self._dynamic:
            if i > first:
                break
            r = self.redirects[i]
            p = r.pattern
            if p.host is not None and p.host != host:
                continue
            values = p.match(key)
            if values is None:
                continue
            if r.query:
                got = _query_values(r.query, query)
                if got is None:
                    continue
                values.update(got)
            return Match(r, _substitute(r, values, query))
        if first < len(self.redirects):
            r = self.redirects[first]
            return Match(r, _substitute(r, {}, query))
        return None

    def header_ops(self, path: str, host: str | None) -> HeaderOps | None:
        """What the header rules do to a response for this path (None: nothing)."""
        if not self.headers:
            return None
        key = (strip_slash(path), host)
        ops = self._hdr_memo.get(key)
        if ops is not None or key in self._hdr_memo:
            return ops
        values: dict[str, tuple[str, list[str]]] = {}  # lower name -> (Name, values)
        removed: set[str] = set()
        for rule in self.headers:
            p = rule.pattern
            if p.host is not None and p.host != host:
                continue
            found = p.match(key[0])
            if found is None:
                continue
            for name in rule.remove:
                removed.add(name)
                values.pop(name, None)
            for name, value in rule.set:
                low = name.lower()
                removed.discard(low)
                v = _fill(value, found, quote_values=False) if found else value
                if low in values:
                    values[low][1].append(v)
                else:
                    values[low] = (name, [v])
        result: HeaderOps | None = None
        if values or removed:
            add = tuple(
                (n.encode("latin-1"), ", ".join(vs).encode("latin-1")) for n, vs in values.values()
            )
            drop = frozenset(n.encode() for n in removed) | frozenset(n.encode() for n in values)
            result = HeaderOps(add, drop)
        if len(self._hdr_memo) >= MAX_MEMO:
            self._hdr_memo.clear()
        self._hdr_memo[key] = result  # type: ignore[assignment]
        return result


@dataclass(frozen=True)
class HeaderOps:
    """Header fields to add (replacing any of the same name) and names to drop."""

    add: tuple[tuple[bytes, bytes], ...]
    drop: frozenset[bytes]  # lower-case names: removed ones and the replaced ones

    def apply(self, headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        kept = [h for h in headers if h[0].lower() not in self.drop]
        return kept + list(self.add)


def strip_slash(path: str) -> str:
    return path.rstrip("/") or "/"


# ----------------------------------------------------------------------------- compiling


def compile_pattern(text: str, where: str, line: int | None, *, allow_host: bool = True) -> Pattern:
    """``/a/:b/*`` (percent-encoded as in a URL) or ``https://host/a/*``."""
    host: str | None = None
    path = text
    m = re.fullmatch(r"(https?)://([^/?#]+)(/[^?#]*)?", text)
    if m is not None:
        if not allow_host:
            raise RuleError(where, line, f"{text!r}: an absolute URL is not allowed here")
        host = m.group(2).lower().rstrip(".")
        if ":" in host:
            raise RuleError(where, line, f"{text!r}: a port in the pattern's host is not supported")
        path = m.group(3) or "/"
    if not path.startswith("/"):
        raise RuleError(where, line, f"{text!r}: a path pattern must start with /")
    if "?" in path or "#" in path:
        raise RuleError(
            where,
            line,
            f"{text!r}: no query or fragment in a path pattern "
            "(query conditions go after it: id=:id)",
        )
    if path.count("*") > 1:
        raise RuleError(where, line, f"{text!r}: only one splat (*) per pattern")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise RuleError(where, line, f"{text!r}: a percent-escape is not UTF-8") from None
    decoded = strip_slash(decoded)
    segments = decoded.split("/")
    names: list[str] = []
    parts: list[str] = []
    dynamic = False
    for i, seg in enumerate(segments):
        if i:
            parts.append("/")
        if seg.startswith(":"):
            name = seg[1:]
            if not _NAME.fullmatch(name):
                raise RuleError(
                    where, line, f"{text!r}: bad placeholder {seg!r} (:name, letters, digits and _)"
                )
            if name == "splat":
                raise RuleError(
                    where,
                    line,
                    f"{text!r}: :splat is the value of *, not a placeholder of the pattern",
                )
            if name in names:
                raise RuleError(where, line, f"{text!r}: placeholder :{name} appears twice")
            names.append(name)
            parts.append(f"(?P<{name}>[^/]+)")
            dynamic = True
            continue
        if "*" in seg:
            before, _, after = seg.partition("*")
            if seg == "*" and i == len(segments) - 1 and i > 0:
                # "/x/*" matches /x, /x/ and everything below
                parts.pop()
                parts.append("(?:/(?P<splat>.*))?")
            else:
                parts.append(re.escape(before) + "(?P<splat>.*)" + re.escape(after))
            names.append("splat")
            dynamic = True
            continue
        parts.append(re.escape(seg))
    if not dynamic:
        return Pattern(text, host, None, decoded, ())
    return Pattern(text, host, re.compile("".join(parts), re.S), decoded, tuple(names))


def _check_refs(text: str, names: Iterable[str], where: str, line: int | None, what: str) -> None:
    # the scheme and port of an absolute URL ("https://", ":8080") are not references
    body = re.sub(r"^[a-z]+://[^/]*", "", text)
    known = set(names)
    for ref in _REF.findall(body):
        if ref not in known:
            have = ", ".join(f":{n}" for n in sorted(known)) or "none"
            raise RuleError(
                where,
                line,
                f"{what} uses :{ref}, which the pattern does not define (it has: {have})",
            )


def make_redirect(
    source: str,
    to: str,
    status: int,
    force: bool,
    query: Sequence[tuple[str, str]],
    where: str,
    line: int | None,
) -> Redirect:
    pattern = compile_pattern(source, where, line)
    if status not in STATUSES:
        raise RuleError(
            where,
            line,
            f"status {status} is not supported (use one of "
            f"{', '.join(map(str, sorted(STATUSES)))})",
        )
    absolute = re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", to) is not None
    if absolute and not re.match(r"https?://[^/?#\s]+", to):
        raise RuleError(where, line, f"target {to!r}: only http:// and https:// URLs")
    if not absolute and not to.startswith("/"):
        raise RuleError(
            where, line, f"target {to!r}: must be a path starting with / or an http(s):// URL"
        )
    if status in REWRITE_STATUSES and absolute:
        raise RuleError(
            where,
            line,
            f"status {status} with {to!r}: a rewrite serves a file "
            "of this site; proxying to another server is not supported",
        )
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in to):
        raise RuleError(where, line, f"target {to!r}: spaces or control characters")
    names = list(pattern.names)
    checked: list[tuple[str, str]] = []
    for key, value in query:
        if not key or not _TOKEN.fullmatch(key.replace("[", "").replace("]", "")):
            raise RuleError(where, line, f"query condition {key}={value}: bad parameter name")
        if value.startswith(":"):
            name = value[1:]
            if not _NAME.fullmatch(name) or name == "splat":
                raise RuleError(where, line, f"query condition {key}={value}: bad placeholder")
            if name in names:
                raise RuleError(where, line, f"placeholder :{name} appears twice")
            names.append(name)
        checked.append((key, value))
    _check_refs(to, names, where, line, f"target {to!r}")
    return Redirect(
        pattern, to, status, force, tuple(checked), f"{where}:{line}" if line else where
    )


def parse_redirects(text: str, where: str) -> list[Redirect]:
    """A ``_redirects`` file's rules (Netlify syntax); RuleError names the line."""
    rules: list[Redirect] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        source = tokens[0]
        i = 1
        query: list[tuple[str, str]] = []
        while i < len(tokens) and "=" in tokens[i] and not _is_target(tokens[i]):
            k, _, v = tokens[i].partition("=")
            query.append((k, v))
            i += 1
        if i >= len(tokens):
            raise RuleError(
                where, n, f"{source!r} has no target (from [conditions] to [status][!])"
            )
        to = tokens[i]
        if not _is_target(to):
            raise RuleError(
                where, n, f"target {to!r}: must be a path starting with / or an http(s):// URL"
            )
        i += 1
        status, force = DEFAULT_STATUS, False
        if i < len(tokens):
            m = re.fullmatch(r"(\d{3})?(!)?", tokens[i])
            if m is None or not (m.group(1) or m.group(2)):
                if "=" in tokens[i]:
                    raise RuleError(
                        where,
                        n,
                        f"condition {tokens[i]!r}: conditions by country, "
                        "language, role or cookie are not supported",
                    )
                raise RuleError(
                    where,
                    n,
                    f"status {tokens[i]!r}: must be a status code such as "
                    "301, optionally followed by ! (forced)",
                )
            if m.group(1):
                status = int(m.group(1))
            force = m.group(2) is not None
            i += 1
        if i < len(tokens):
            extra = " ".join(tokens[i:])
            if "=" in tokens[i]:
                raise RuleError(
                    where,
                    n,
                    f"condition {extra!r}: conditions by country, "
                    "language, role or cookie are not supported",
                )
            raise RuleError(where, n, f"unexpected {extra!r} after the status")
        rules.append(make_redirect(source, to, status, force, query, where, n))
        if len(rules) > MAX_RULES:
            raise RuleError(where, n, f"more than {MAX_RULES} rules")
    return rules


def _is_target(token: str) -> bool:
    return token.startswith("/") or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", token) is not None


def make_header_rule(
    source: str,
    values: Sequence[tuple[str, str]],
    remove: Sequence[str],
    where: str,
    line: int | None,
    lines: Sequence[int | None] | None = None,
) -> HeaderRule:
    pattern = compile_pattern(source, where, line)
    out: list[tuple[str, str]] = []
    for i, (name, value) in enumerate(values):
        at = lines[i] if lines is not None else line
        check_header(name, value, where, at)
        _check_refs(value, pattern.names, where, at, f"{name}'s value")
        out.append((name, value))
    gone: list[str] = []
    for name in remove:
        check_header(name, "", where, line, value_needed=False)
        gone.append(name.lower())
    return HeaderRule(pattern, tuple(out), tuple(gone), f"{where}:{line}" if line else where)


def check_header(
    name: str, value: str, where: str, line: int | None, value_needed: bool = True
) -> None:
    if not _TOKEN.fullmatch(name):
        raise RuleError(where, line, f"{name!r} is not a valid header name")
    if name.lower() in FORBIDDEN_HEADERS:
        raise RuleError(where, line, f"{name} is set by the server itself and cannot be changed")
    if value_needed and not value:
        raise RuleError(where, line, f"{name} has an empty value")
    if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in value):
        raise RuleError(where, line, f"{name}'s value has a control character")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise RuleError(where, line, f"{name}'s value is not ISO-8859-1 (encode it)") from None


def parse_headers(text: str, where: str) -> list[HeaderRule]:
    """A ``_headers`` file's blocks; RuleError names the line."""
    rules: list[HeaderRule] = []
    current: tuple[str, int] | None = None
    values: list[tuple[str, str]] = []
    value_lines: list[int | None] = []
    remove: list[str] = []

    def close() -> None:
        if current is not None:
            rules.append(
                make_header_rule(current[0], values, remove, where, current[1], value_lines)
            )

    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not raw[0].isspace():
            close()
            if len(stripped.split()) != 1:
                raise RuleError(
                    where,
                    n,
                    f"{stripped!r}: a path pattern is one word; its "
                    "headers go on the following, indented lines",
                )
            compile_pattern(stripped, where, n)  # reported at its own line
            current = (stripped, n)
            values, value_lines, remove = [], [], []
            continue
        if current is None:
            raise RuleError(where, n, "a header line before any path pattern")
        if stripped.startswith("!"):
            name = stripped[1:].strip()
            check_header(name, "", where, n, value_needed=False)
            remove.append(name)
            continue
        name, colon, value = stripped.partition(":")
        if not colon:
            raise RuleError(where, n, f"{stripped!r}: expected Name: value (or ! Name)")
        name, value = name.strip(), value.strip()
        check_header(name, value, where, n)
        values.append((name, value))
        value_lines.append(n)
    close()
    return rules


def _read(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise RuleError(str(path), None, "is a folder, not a rule file") from None
    except OSError as exc:
        raise RuleError(str(path), None, f"cannot be read: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RuleError(str(path), line, "not UTF-8 text") from None


def file_stamp(root: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """(inode, size, mtime_ns) of the rule files, to see when they change."""
    out: list[tuple[int, int, int] | None] = []
    for name in (REDIRECTS_FILE, HEADERS_FILE):
        try:
            st = (root / name).stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def compile_rules(
    root: Path,
    *,
    redirects: Sequence[Mapping[str, Any]] = (),
    headers: Sequence[Mapping[str, Any]] = (),
    spa_fallback: str | None = None,
    config_where: str = "config",
    config_lines: Mapping[tuple[str, int], int] | None = None,
) -> RuleSet:
    """The site's rules: its ``_redirects`` and ``_headers`` files, then the config's
    ``redirects`` and ``headers`` tables (already TOML-parsed: ``config_lines`` gives the
    line of each table, ``("redirects", i)``), and the SPA fallback."""
    lines = config_lines or {}
    reds: list[Redirect] = []
    hdrs: list[HeaderRule] = []
    sources: list[str] = []
    text = _read(root / REDIRECTS_FILE)
    if text is not None:
        reds += parse_redirects(text, str(root / REDIRECTS_FILE))
        sources.append(str(root / REDIRECTS_FILE))
    text = _read(root / HEADERS_FILE)
    if text is not None:
        hdrs += parse_headers(text, str(root / HEADERS_FILE))
        sources.append(str(root / HEADERS_FILE))
    for i, t in enumerate(redirects):
        reds.append(_config_redirect(t, config_where, lines.get(("redirects", i)), i))
    for i, t in enumerate(headers):
        hdrs.append(_config_headers(t, config_where, lines.get(("headers", i)), i))
    if redirects or headers:
        sources.append(config_where)
    if spa_fallback is not None:
        where = config_where
        if not isinstance(spa_fallback, str) or not spa_fallback.startswith("/"):
            raise RuleError(
                where,
                lines.get(("spa_fallback", 0)),
                f"spa_fallback: must be a path of the site such as /index.html, got "
                f"{spa_fallback!r}",
            )
        if "?" in spa_fallback or "#" in spa_fallback or "*" in spa_fallback:
            raise RuleError(
                where,
                lines.get(("spa_fallback", 0)),
                f"spa_fallback: a plain path, got {spa_fallback!r}",
            )
    return RuleSet(tuple(reds), tuple(hdrs), spa_fallback, tuple(sources))


def _config_redirect(t: Mapping[str, Any], where: str, line: int | None, i: int) -> Redirect:
    label = f"redirects[{i}]"
    if not isinstance(t, Mapping):
        raise RuleError(where, line, f"{label}: must be a table")
    known = {"from", "to", "status", "force", "query"}
    for k in t:
        if k not in known:
            raise RuleError(
                where, line, f"{label}: unknown key {k!r} (known: {', '.join(sorted(known))})"
            )
    src, to = t.get("from"), t.get("to")
    if not isinstance(src, str) or not isinstance(to, str):
        raise RuleError(where, line, f"{label}: needs from and to (strings)")
    status = t.get("status", DEFAULT_STATUS)
    if isinstance(status, bool) or not isinstance(status, int):
        raise RuleError(where, line, f"{label}.status: must be an integer, got {status!r}")
    force = t.get("force", False)
    if not isinstance(force, bool):
        raise RuleError(where, line, f"{label}.force: must be true or false, got {force!r}")
    q = t.get("query", {})
    if not isinstance(q, Mapping) or not all(isinstance(v, str) for v in q.values()):
        raise RuleError(where, line, f"{label}.query: must be a table of strings")
    try:
        return make_redirect(src, to, status, force, list(q.items()), where, line)
    except RuleError as exc:
        raise RuleError(where, line, f"{label}: {exc.reason}") from None


def _config_headers(t: Mapping[str, Any], where: str, line: int | None, i: int) -> HeaderRule:
    label = f"headers[{i}]"
    if not isinstance(t, Mapping):
        raise RuleError(where, line, f"{label}: must be a table")
    for k in t:
        if k not in ("for", "values", "remove"):
            raise RuleError(where, line, f"{label}: unknown key {k!r} (known: for, values, remove)")
    src = t.get("for")
    values = t.get("values", {})
    remove = t.get("remove", [])
    if not isinstance(src, str):
        raise RuleError(where, line, f"{label}: needs for (a path pattern)")
    if not isinstance(values, Mapping):
        raise RuleError(where, line, f"{label}.values: must be a table of header values")
    pairs: list[tuple[str, str]] = []
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) for v in items):
            raise RuleError(
                where, line, f"{label}.values.{name}: must be a string or a list of strings"
            )
        pairs += [(name, v) for v in items]
    if not isinstance(remove, list) or not all(isinstance(v, str) for v in remove):
        raise RuleError(where, line, f"{label}.remove: must be a list of header names")
    try:
        return make_header_rule(src, pairs, remove, where, line)
    except RuleError as exc:
        raise RuleError(where, line, f"{label}: {exc.reason}") from None


# ----------------------------------------------------------------------------- matching


def _query_values(conds: tuple[tuple[str, str], ...], query: bytes | None) -> dict[str, str] | None:
    if query is None:
        return None
    params: dict[str, str] = {}
    for item in query.split(b"&"):
        k, _, v = item.partition(b"=")
        try:
            key = unquote(k.decode("latin-1").replace("+", " "))
        except ValueError:
            continue
        params.setdefault(key, unquote(v.decode("latin-1").replace("+", " ")))
    out: dict[str, str] = {}
    for key, want in conds:
        got = params.get(key)
        if got is None:
            return None
        if want.startswith(":"):
            out[want[1:]] = got
        elif got != want:
            return None
    return out


def _fill(template: str, values: Mapping[str, str], *, quote_values: bool = True) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            return m.group(0)
        v = values[name]
        if not quote_values:
            return v
        return quote(v, safe=_SAFE_PATH if name == "splat" else _SAFE_SEGMENT)

    prefix = ""
    m = re.match(r"[a-z]+://[^/]*", template)
    if m is not None:
        prefix, template = m.group(0), template[m.end() :]
    return prefix + _REF.sub(sub, template)


def _substitute(rule: Redirect, values: Mapping[str, str], query: bytes | None) -> bytes:
    """The rule's target with the values in; the request's query is kept when the target
    has none of its own (Netlify's behaviour) and no query condition consumed it."""
    target = _fill(rule.to, values) if values else rule.to
    if query and "?" not in target and not rule.query:
        target += "?" + query.decode("latin-1")
    return target.encode("latin-1", "replace")
