"""Virtual hosts and site rules in front of the file service.

``VhostConfig`` is what a worker serves: one or more ``VirtualSite`` (a name, the host
names it answers to, its ``SiteConfig`` with its root and error pages, its compiled
``RuleSet``), the default site's name, the access log. ``VhostConfig.build()`` makes the
``Sites`` that the loop and ``Connection`` use in place of a ``Site`` (same methods:
``respond``, ``error``, ``log``, ``flush``, ``close``, ``config``).

Per request: the site is chosen by the Host header (or an absolute-form target's host):
an exact name, else the longest ``*.suffix`` wildcard, else the default site. Then its
rules (http/rules.py): a forced rule first, else the file service, and where that answered
404, the first matching rule or the SPA fallback. Header rules are merged into whatever the
site answered. Everything a response is made of is decided here, in Python, before the
reply leaves ``respond``: a reply is final (a cache of replies keyed by site and target sees
exactly what a client gets).

Rules are compiled before the appliance starts (an error stops it) and again when a worker
reloads (SIGHUP) or notices, at most once a second, that ``_redirects`` or ``_headers``
changed; a reload that fails keeps the old rules and logs why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.http import rules as rules_mod
from appliance.http.accesslog import AccessLog, AccessLogOwner
from appliance.http.config import SiteConfig
from appliance.http.site import BadRequest, Reply, Site, Target, is_hidden, parse_target, serialize

log = logging.getLogger("mtcp_appliance")

RECHECK_S = 1.0  # how often the rule files' stamps are looked at
MAX_HOSTS = 1024  # Host values remembered (attacker-controlled: bounded)
MAX_PATHS = 4096
RULE_FILES = ("/" + rules_mod.REDIRECTS_FILE, "/" + rules_mod.HEADERS_FILE)
_NO_CONDITIONALS = (b"if-none-match", b"if-modified-since", b"range", b"if-range")
_VALIDATORS = (b"etag", b"last-modified", b"accept-ranges", b"cache-control")


@dataclass(frozen=True)
class VirtualSite:
    """One site: a name (metrics label, log field), host names, files and rules."""

    name: str
    server_names: tuple[str, ...]  # exact names and "*.suffix" wildcards, lower case
    site: SiteConfig
    rules: rules_mod.RuleSet = field(default_factory=rules_mod.RuleSet)
    # what the rules were compiled from, to compile them again
    redirects: tuple[Mapping[str, Any], ...] = ()
    headers: tuple[Mapping[str, Any], ...] = ()
    spa_fallback: str | None = None
    config_where: str = "config"
    config_lines: Mapping[tuple[str, int], int] = field(default_factory=dict)

    def compile_or_keep(self) -> VirtualSite:
        """Compiled again, or as it was (logged) when the rules do not compile."""
        try:
            return self.compile()
        except rules_mod.RuleError as exc:
            log.error("site %s: keeping the old rules: %s", self.name, exc)
            return self

    def compile(self) -> VirtualSite:
        """The same site with its rules compiled from the files and tables (RuleError)."""
        ruleset = rules_mod.compile_rules(
            self.site.root,
            redirects=self.redirects,
            headers=self.headers,
            spa_fallback=self.spa_fallback,
            config_where=self.config_where,
            config_lines=self.config_lines,
        )
        return dataclasses.replace(self, rules=ruleset)


@dataclass(frozen=True)
class VhostConfig:
    """Everything a worker's server needs (the supervisor builds it before forking)."""

    sites: tuple[VirtualSite, ...]
    default: str
    access_log: Path | None = None  # "-": stdout
    log_format: str = "combined"
    # SIGHUP: the sites as the configuration says now, not compiled (None: no config file)
    source: Callable[[], VhostConfig] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = [s.name for s in self.sites]
        if not names or self.default not in names:
            raise ValueError(f"the default site {self.default!r} is not among {names}")

    @property
    def config(self) -> SiteConfig:
        """The default site's settings (the connection limits come from it)."""
        return self.by_name(self.default).site

    @property
    def root(self) -> Path:
        return self.config.root

    def by_name(self, name: str) -> VirtualSite:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def compile(self) -> VhostConfig:
        """Every site's rules compiled; RuleError for the first that fails."""
        return dataclasses.replace(self, sites=tuple(s.compile() for s in self.sites))

    def reload(self) -> VhostConfig:
        """SIGHUP: the rules compiled again, from the rule files and (with a config file)
        the file's rule tables as they are now. What fails to compile keeps its old rules
        (logged). The sites themselves (names, host names, roots) change only with a
        restart: the metrics and the access log name them."""
        fresh: VhostConfig | None = None
        if self.source is not None:
            try:
                fresh = self.source()
            except Exception as exc:  # noqa: BLE001 - ConfigError, or the file is gone
                log.error("config file: keeping the old site rules: %s", exc)
        if fresh is not None:
            same = [(s.name, s.server_names, s.site.root) for s in fresh.sites] == [
                (s.name, s.server_names, s.site.root) for s in self.sites
            ]
            if not same:
                log.warning(
                    "the config file's sites changed (names, server names or roots): restart "
                    "the appliance to apply that; their rules are reloaded"
                )
            out = []
            for s in self.sites:
                new = next((f for f in fresh.sites if f.name == s.name), None)
                if new is not None:  # the new rule tables on the running site
                    s = dataclasses.replace(
                        s,
                        redirects=new.redirects,
                        headers=new.headers,
                        spa_fallback=new.spa_fallback,
                        config_lines=new.config_lines,
                    )
                out.append(s.compile_or_keep())
            return dataclasses.replace(self, sites=tuple(out))
        return dataclasses.replace(self, sites=tuple(s.compile_or_keep() for s in self.sites))

    def build(self) -> Sites:
        return Sites(self)


def normalize_host(value: bytes | None) -> str | None:
    """A Host value without port, trailing dot or case; None when empty or odd."""
    if not value:
        return None
    try:
        host = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else None
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        host = name
    return host.rstrip(".") or None


class SiteService:
    """One virtual site in a worker: its ``Site`` (files, cache, error pages) and rules."""

    def __init__(self, vsite: VirtualSite) -> None:
        self.vsite = vsite
        self.name = vsite.name
        self.site = Site(dataclasses.replace(vsite.site, access_log=None))
        self.rules = vsite.rules
        self._stamp = rules_mod.file_stamp(self.site.config.root)
        self._checked = float("-inf")  # the first request looks (clocks may differ)
        self._targets: dict[bytes, Target | None] = {}
        # (path, host) -> (headers it was made from, merged headers, serialized)
        self._merged: dict[
            tuple[str, str | None],
            tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bytes],
        ] = {}
        cc = vsite.site.cache_control
        self._cache_control = [(b"Cache-Control", cc.encode())] if cc else []

    # ------------------------------------------------------------------ rules

    def recheck(self, now: float) -> None:
        """Compiles the rules again when a rule file changed (at most once a second)."""
        if now - self._checked < RECHECK_S:
            return
        self._checked = now
        stamp = rules_mod.file_stamp(self.site.config.root)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.vsite = self.vsite.compile()
        except rules_mod.RuleError as exc:
            log.error(
                "site %s: rule files changed but do not compile; keeping the old rules: %s",
                self.name,
                exc,
            )
            return
        self.rules = self.vsite.rules
        self._merged.clear()
        log.info(
            "site %s: rules reloaded (%d redirects, %d header blocks)",
            self.name,
            len(self.rules.redirects),
            len(self.rules.headers),
        )

    def _parse(self, target: bytes) -> Target | None:
        t = self._targets.get(target, False)
        if t is False:
            try:
                t = parse_target(target)
            except BadRequest:
                t = None
            if len(self._targets) >= MAX_PATHS:
                self._targets.clear()
            self._targets[target] = t
        return t  # type: ignore[return-value]

    # ------------------------------------------------------------------ requests

    def respond(
        self,
        method: bytes,
        target: bytes,
        headers: dict[bytes, bytes],
        now: float,
        host: str | None,
    ) -> Reply:
        rules = self.rules
        if rules.empty:
            return self.respond_plain(method, target, headers, now)
        t = self._parse(target)
        if t is None:
            reply = self.site.respond(method, target, headers, now)  # the 400
            reply.site = self.name
            return reply
        path = t.path
        if path in RULE_FILES:
            reply = self.site.error(404)
        elif method not in (b"GET", b"HEAD"):
            reply = self.site.respond(method, target, headers, now)  # 405
        else:
            m = rules.match(path, t.query, host)
            if m is not None and m.rule.force:
                reply = self._apply(m, method, headers, now)
            else:
                reply = self.site.respond(method, target, headers, now)
                if reply.status == 404:
                    if m is not None:
                        reply.release()
                        reply = self._apply(m, method, headers, now)
                    elif rules.spa_fallback is not None and _spa_eligible(t):
                        reply.release()
                        reply = self.site.respond(method, rules.spa_fallback.encode(), headers, now)
        ops = rules.header_ops(path, host)
        if ops is not None:
            self._merge(reply, ops, path, host)
        reply.site = self.name
        return reply

    def respond_plain(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], now: float
    ) -> Reply:
        """A site without rules: the file service, with the rule files kept hidden."""
        reply = self.site.respond(method, target, headers, now)
        # a name that decodes to _redirects or _headers has a "_" or a "%" in it
        if (
            reply.status == 200
            and (b"_" in target or b"%" in target)
            and self._is_rule_file(target)
        ):
            reply.release()
            reply = self.site.error(404)
        reply.site = self.name
        return reply

    def _is_rule_file(self, target: bytes) -> bool:
        t = self._parse(target)
        return t is not None and t.path in RULE_FILES

    def _apply(
        self, m: rules_mod.Match, method: bytes, headers: dict[bytes, bytes], now: float
    ) -> Reply:
        status = m.rule.status
        if status in rules_mod.REDIRECT_STATUSES:
            return self.site.error(status, [(b"Location", m.target), *self._cache_control])
        if status == 200:
            return self.site.respond(method, m.target, headers, now)
        # 404 / 410 with the target's content: never conditional, never a range
        plain = {k: v for k, v in headers.items() if k not in _NO_CONDITIONALS}
        inner = self.site.respond(method, m.target, plain, now)
        if inner.status != 200:
            inner.release()
            return self.site.error(status)
        inner.status = status
        inner.headers = [h for h in inner.headers if h[0].lower() not in _VALIDATORS]
        inner.head = None
        return inner

    def _merge(self, reply: Reply, ops: rules_mod.HeaderOps, path: str, host: str | None) -> None:
        key = (path, host)
        memo = self._merged.get(key)
        if memo is not None and memo[0] is reply.headers:
            reply.headers, reply.head = memo[1], memo[2]
            return
        merged = ops.apply(reply.headers)
        head = serialize(merged)
        if reply.head is not None:  # a cached file's headers: the same list next time
            if len(self._merged) >= MAX_PATHS:
                self._merged.clear()
            self._merged[key] = (reply.headers, merged, head)
        reply.headers, reply.head = merged, head

    def error(self, status: int, extra: list[tuple[bytes, bytes]] | None, close: bool) -> Reply:
        reply = self.site.error(status, extra, close)
        reply.site = self.name
        return reply

    def close(self) -> None:
        self.site.close()


def _spa_eligible(t: Target) -> bool:
    """The SPA fallback answers paths of the app (no extension in the last segment), never
    missing assets (/app.js, /logo.png keep their 404) or hidden paths."""
    if is_hidden(t.segments):
        return False
    return not t.segments or "." not in t.segments[-1]


class Sites(AccessLogOwner):
    """The server's view of every virtual site: what ``loop.run`` and ``Connection`` call."""

    def __init__(self, vhosts: VhostConfig) -> None:
        self.vhosts = vhosts
        self.config = vhosts.config
        self.services = {s.name: SiteService(s) for s in vhosts.sites}
        self.default = self.services[vhosts.default]
        self._exact: dict[str, SiteService] = {}
        self._wild: dict[str, SiteService] = {}  # ".example.com" -> service
        for s in vhosts.sites:
            for n in s.server_names:
                if n.startswith("*."):
                    self._wild.setdefault(n[1:], self.services[s.name])
                else:
                    self._exact.setdefault(n, self.services[s.name])
        self._hosts: dict[str | None, SiteService] = {}
        self._only = self.default if len(self.services) == 1 else None
        # the Host value as received -> (site, normalized host): one lookup per request
        self._by_raw: dict[bytes | None, tuple[SiteService, str | None]] = {}
        # a record without a site (an error before one was chosen) is the default site's
        self.access_log = None
        if vhosts.access_log is not None:
            self.access_log = AccessLog(
                vhosts.access_log,
                vhosts.log_format,
                with_site=len(vhosts.sites) > 1,
                default_site=self.default.name,
            )
        self._checked = float("-inf")  # the caller's clock: the first request sets it
        # the static responder (responder.py): its hook, and whether a response depends on
        # the Host field (its key then includes it). Always: a site's rules may gain a
        # host-specific rule (https://host/... in _redirects) when its rule files change,
        # without a new server; one Host value per site is the usual case, so the cost is
        # an entry per spelling of the Host.
        self.offer: Callable[[bytes, bytes, dict[bytes, bytes], float], None] | None = None
        self.varies_by_host = True
        self.single = self._only is not None

    def select(self, host: str | None) -> SiteService:
        svc = self._hosts.get(host)
        if svc is not None:
            return svc
        svc = self._exact.get(host) if host is not None else None
        if svc is None and host is not None and self._wild:
            dot = host.find(".")
            while dot >= 0 and svc is None:
                svc = self._wild.get(host[dot:])
                dot = host.find(".", dot + 1)
        if svc is None:
            svc = self.default
        if len(self._hosts) >= MAX_HOSTS:
            self._hosts.clear()
        self._hosts[host] = svc
        return svc

    def respond(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], now: float
    ) -> Reply:
        if now - self._checked >= RECHECK_S:
            self._checked = now
            for svc in self.services.values():
                svc.recheck(now)
        only = self._only
        if only is not None and only.rules.empty:  # one site, no rules: the Host is moot
            return only.respond_plain(method, target, headers, now)
        raw = headers.get(b"host")
        if target[:1] != b"/" and target.startswith((b"http://", b"https://")):
            raw = target.split(b"//", 1)[1].split(b"/", 1)[0]  # absolute-form: its host wins
        hit = self._by_raw.get(raw)
        if hit is None:
            host = normalize_host(raw)
            hit = (self.select(host), host)
            if len(self._by_raw) >= MAX_HOSTS:
                self._by_raw.clear()
            self._by_raw[raw] = hit
        return hit[0].respond(method, target, headers, now, hit[1])

    def error(
        self, status: int, extra: list[tuple[bytes, bytes]] | None = None, close: bool = False
    ) -> Reply:
        """An error without a request to choose the site by: the default site's."""
        return self.default.error(status, extra, close)

    def close(self) -> None:
        super().close()
        for svc in self.services.values():
            svc.close()


def single(site: SiteConfig, name: str = "default", **rules: Any) -> VhostConfig:
    """One site answering every host (what a config without ``[[sites]]`` is)."""
    vs = VirtualSite(name, (), dataclasses.replace(site, access_log=None), **rules)
    return VhostConfig((vs,), name, access_log=site.access_log)


def build(site: SiteConfig | VhostConfig) -> Site | Sites:
    """What the serving loop runs for a ``SiteConfig`` (one plain site) or a
    ``VhostConfig``."""
    return site.build() if isinstance(site, VhostConfig) else Site(site)
