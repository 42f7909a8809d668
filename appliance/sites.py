"""The sites a ``Config`` serves: one, or several virtual hosts (``[[sites]]``), with rules.

    [[sites]]
    name = "docs"                                  # metrics label, access log field
    server_names = ["docs.example", "*.docs.example"]
    root = "/srv/docs"
    spa_fallback = "/index.html"
    default = true                                 # answers every other Host
    [[sites.redirects]]
    from = "/old/*"
    to = "/new/:splat"
    status = 301
    [[sites.headers]]
    for = "/assets/*"
    values = { Cache-Control = "public, max-age=31536000, immutable" }

Without ``[[sites]]`` there is one site, ``default``: ``root``, ``spa_fallback`` and the
top-level ``[[redirects]]`` / ``[[headers]]``. Each site's ``_redirects`` and ``_headers``
files are read from its root. ``vhost_config`` checks all of it and compiles the rules; a
mistake raises ``ConfigError`` naming the key (or the rule file) and the line.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from appliance.config import Config, ConfigError

MAX_SITES = 32  # the metrics label set is bounded by this (metrics/http_block.py)
SITE_KEYS = (
    "name", "server_names", "root", "spa_fallback", "default", "redirects", "headers",
    "cert", "key", "ocsp_staple",  # HTTPS: the site's own certificate (appliance.config)
)  # fmt: skip
_SITE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
_HOST = re.compile(
    r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def _where(cfg: Config, *key: Any) -> str:
    path = cfg.config_file
    line = cfg.table_lines.get(tuple(key))
    if path is None:
        return "config"
    return f"{path}:{line}" if line else str(path)


def vhost_config(cfg: Config, compile_rules: bool = True) -> Any:
    """The checked, compiled ``VhostConfig`` (imports the HTTP server: call it in the
    supervisor, before the workers fork); ``compile_rules`` False: the rules left to the
    caller (a reload compiles them site by site)."""
    from appliance.http import rules as rules_mod
    from appliance.http.config import SiteConfig as PlainSiteConfig
    from appliance.http.vhosts import VhostConfig, VirtualSite

    # settings every site shares: the redirect of plain requests and HSTS (HTTPS), and the
    # lingering close
    https = {
        "redirect_https_port": cfg.tls_port if cfg.redirect_http else None,
        "hsts": b"max-age=%d" % cfg.hsts if cfg.hsts else None,
        "lingering_close": cfg.lingering_close,
        "lingering_time_s": cfg.lingering_time,
        "lingering_timeout_s": cfg.lingering_timeout,
    }

    def SiteConfig(**kw: Any) -> Any:  # noqa: N802 - stands in for the class
        return PlainSiteConfig(**kw, **https)

    access_log = cfg.access_log
    where = str(cfg.config_file) if cfg.config_file is not None else "config"
    sites: list[VirtualSite] = []
    default = "default"
    if not cfg.sites:
        lines = {
            **{
                ("redirects", i): cfg.table_lines.get(("redirects", i))
                for i in range(len(cfg.redirects))
            },
            **{
                ("headers", i): cfg.table_lines.get(("headers", i)) for i in range(len(cfg.headers))
            },
            ("spa_fallback", 0): cfg.table_lines.get(("spa_fallback",)),
        }
        sites.append(
            VirtualSite(
                "default",
                (),
                SiteConfig(root=cfg.root),
                redirects=tuple(cfg.redirects),
                headers=tuple(cfg.headers),
                spa_fallback=cfg.spa_fallback,
                config_where=where,
                config_lines={k: v for k, v in lines.items() if v is not None},
            )
        )
    else:
        for key in ("redirects", "headers", "spa_fallback", "root"):
            src = cfg.sources.get(key)
            if src is not None:
                raise ConfigError(
                    key,
                    f"with [[sites]], put it in each site's table (sites[].{key})",
                    _where(cfg, key) if src == str(cfg.config_file) else src,
                )
        if len(cfg.sites) > MAX_SITES:
            raise ConfigError("sites", f"at most {MAX_SITES} sites", where)
        seen_hosts: dict[str, str] = {}
        defaults: list[str] = []
        for i, t in enumerate(cfg.sites):
            site = _site(cfg, i, t, seen_hosts, defaults, SiteConfig, VirtualSite, where)
            if any(s.name == site.name for s in sites):
                raise ConfigError(
                    f"sites[{i}].name",
                    f"{site.name!r} names an earlier site too",
                    _where(cfg, "sites", i),
                )
            sites.append(site)
        if len(defaults) > 1:
            raise ConfigError("sites", f"more than one default site: {', '.join(defaults)}", where)
        default = defaults[0] if defaults else sites[0].name
    vh = VhostConfig(
        tuple(sites),
        default,
        access_log=access_log,
        log_format=cfg.log_format,
        source=(lambda: _reread(cfg)) if cfg.config_file is not None else None,
    )
    if not compile_rules:
        return vh
    try:
        return vh.compile()
    except rules_mod.RuleError as exc:
        raise ConfigError(
            "rules", exc.reason, f"{exc.where}:{exc.line}" if exc.line else exc.where
        ) from None


def _reread(cfg: Config) -> Any:
    """SIGHUP: the sites as the config file says now (its site tables read again; every
    other setting as it was), rules not compiled yet. ConfigError when the file has a
    mistake now."""
    from appliance.config import read_file, table_lines

    assert cfg.config_file is not None
    data = read_file(cfg.config_file)
    tables: dict[str, Any] = {}
    for key in ("redirects", "headers", "sites"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise ConfigError(key, "must be an array of tables", str(cfg.config_file))
        tables[key] = tuple(value)
    spa = cfg.spa_fallback
    if cfg.sources.get("spa_fallback") == str(cfg.config_file):
        spa = data.get("spa_fallback")
    fresh = dataclasses.replace(
        cfg, **tables, spa_fallback=spa, table_lines=table_lines(cfg.config_file)
    )
    return vhost_config(fresh, compile_rules=False)


def _site(
    cfg: Config,
    i: int,
    t: dict[str, Any],
    seen_hosts: dict[str, str],
    defaults: list[str],
    site_config: Any,
    virtual_site: Any,
    where_file: str,
) -> Any:
    def err(key: str, reason: str) -> ConfigError:
        return ConfigError(
            f"sites[{i}].{key}",
            reason,
            _where(cfg, "sites", i, key)
            if cfg.table_lines.get(("sites", i, key))
            else _where(cfg, "sites", i),
        )

    for k in t:
        if k not in SITE_KEYS:
            raise err(k, f"unknown key; known: {', '.join(SITE_KEYS)}")
    name = t.get("name")
    if not isinstance(name, str) or not _SITE_NAME.fullmatch(name):
        raise err(
            "name",
            f"needs a name of 1..32 characters a-z 0-9 _ . - (the metrics label), got {name!r}",
        )
    names = t.get("server_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise err("server_names", "must be a list of host names")
    clean: list[str] = []
    for n in names:
        host = n.strip().lower().rstrip(".")
        if not _HOST.fullmatch(host):
            raise err("server_names", f"{n!r} is not a host name (or *.suffix wildcard)")
        if host in seen_hosts:
            raise err("server_names", f"{n!r} is already a name of site {seen_hosts[host]!r}")
        seen_hosts[host] = name
        clean.append(host)
    root = t.get("root")
    if not isinstance(root, str) or not root:
        raise err("root", "needs root, the folder to serve (a string)")
    root_path = Path(root).expanduser()
    if cfg.config_file is not None and not root_path.is_absolute():
        root_path = cfg.config_file.parent / root_path  # relative to the config file
    if not root_path.is_dir():
        raise err("root", f"{root_path}: not a folder")
    spa = t.get("spa_fallback")
    if spa is not None and (not isinstance(spa, str) or not spa.startswith("/")):
        raise err("spa_fallback", f"must be a path of the site such as /index.html, got {spa!r}")
    is_default = t.get("default", False)
    if not isinstance(is_default, bool):
        raise err("default", f"must be true or false, got {is_default!r}")
    if is_default:
        defaults.append(name)
    reds = t.get("redirects", [])
    hdrs = t.get("headers", [])
    for key, v in (("redirects", reds), ("headers", hdrs)):
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise err(key, f"must be an array of tables ([[sites.{key}]])")
    lines = {
        **{
            ("redirects", j): cfg.table_lines.get(("sites", i, "redirects", j))
            for j in range(len(reds))
        },
        **{
            ("headers", j): cfg.table_lines.get(("sites", i, "headers", j))
            for j in range(len(hdrs))
        },
        ("spa_fallback", 0): cfg.table_lines.get(("sites", i, "spa_fallback")),
    }
    return virtual_site(
        name,
        tuple(clean),
        site_config(root=root_path),
        redirects=tuple(reds),
        headers=tuple(hdrs),
        spa_fallback=spa,
        config_where=where_file,
        config_lines={k: v for k, v in lines.items() if v is not None},
    )
