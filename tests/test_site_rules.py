"""Site rules (_redirects, _headers, TOML tables, SPA fallback) and virtual hosts, sans I/O:
every syntax form, every error with its line, and what requests get. Over HTTP on both
stacks: tests/test_site_rules_http.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import ConfigError, load
from appliance.http import rules as rules_mod
from appliance.http.accesslog import AccessLog
from appliance.http.config import SiteConfig
from appliance.http.connection import Connection
from appliance.http.rules import RuleError, RuleSet, parse_headers, parse_redirects
from appliance.http.site import Reply
from appliance.http.vhosts import Sites, VhostConfig, VirtualSite, normalize_host, single
from appliance.sites import vhost_config

T0 = 1000.0

REDIRECTS = """\
# comment, then a blank line

/home                    /                          301
/news/:year/:month/*     /blog/:year-:month/:splat  308
/store   id=:id          /products/:id              302
/app/*                   /app/index.html            200
/legacy/*                /gone.html                 404!
/forced                  /small.txt                 200!
https://old.example/*    https://new.example/:splat 301
/default                 /somewhere
/temp                    /elsewhere                 307
/found                   /there                     302
/see                     /other                     303
/gone                    /gone.html                 410
/index.html              /nope                      301
"""

HEADERS = """\
# every page
/*
  X-Frame-Options: DENY
  Content-Security-Policy: default-src 'self'
/assets/*
  Cache-Control: public, max-age=31536000, immutable
  ! X-Frame-Options
/movies/:title
  X-Movie: :title
/*.txt
  X-Text: yes
/assets/*
  X-Extra: a
/assets/special.css
  X-Extra: b
"""


def rs(redirects: str = "", headers: str = "") -> RuleSet:
    return RuleSet(
        tuple(parse_redirects(redirects, "_redirects")), tuple(parse_headers(headers, "_headers"))
    )


# ---------------------------------------------------------------- parsing: every form


def test_redirect_forms_match_and_substitute() -> None:
    r = rs(REDIRECTS)
    m = r.match("/home/", None, None)  # a trailing slash does not matter
    assert m is not None and (m.target, m.rule.status, m.rule.force) == (b"/", 301, False)
    m = r.match("/news/2024/05/a b/c", b"q=1", None)  # placeholders, splat, query kept
    assert m is not None and m.target == b"/blog/2024-05/a%20b/c?q=1" and m.rule.status == 308
    m = r.match("/store", b"x=1&id=7", None)  # query condition captured, query consumed
    assert m is not None and m.target == b"/products/7" and m.rule.status == 302
    assert r.match("/store", None, None) is None  # the condition is required
    m = r.match("/app", None, None)  # /app/* also matches /app
    assert m is not None and m.target == b"/app/index.html" and m.rule.rewrite
    m = r.match("/legacy/x", None, None)
    assert m is not None and (m.rule.status, m.rule.force) == (404, True)
    m = r.match("/a/b", None, "old.example")  # a host-only rule
    assert m is not None and m.target == b"https://new.example/a/b"
    m = r.match("/default", None, None)
    assert m is not None and m.rule.status == 301  # Netlify's default status
    for path, status in (("/temp", 307), ("/found", 302), ("/see", 303), ("/gone", 410)):
        m = r.match(path, None, None)
        assert m is not None and m.rule.status == status, path
    assert r.match("/elsewhere", None, None) is None


def test_first_matching_redirect_wins_across_exact_and_dynamic_rules() -> None:
    r = rs("/a/*  /first  301\n/a/b  /second 301\n/c  /third 301\n/*  /fourth 302\n")
    m = r.match("/a/b", None, None)
    assert m is not None and m.target == b"/first"
    m = r.match("/c", None, None)
    assert m is not None and m.target == b"/third"
    m = r.match("/zzz", None, None)
    assert m is not None and m.target == b"/fourth"


def test_header_blocks_combine_detach_and_substitute() -> None:
    r = rs(headers=HEADERS)
    ops = r.header_ops("/page", None)
    assert ops is not None and dict(ops.add) == {
        b"X-Frame-Options": b"DENY",
        b"Content-Security-Policy": b"default-src 'self'",
    }
    ops = r.header_ops("/assets/special.css", None)
    assert ops is not None
    assert dict(ops.add) == {
        b"Content-Security-Policy": b"default-src 'self'",
        b"Cache-Control": b"public, max-age=31536000, immutable",
        b"X-Extra": b"a, b",  # two blocks name it: both values
    }
    assert b"x-frame-options" in ops.drop  # "! X-Frame-Options" removed the /* one
    ops = r.header_ops("/movies/Heat", None)
    assert ops is not None and dict(ops.add)[b"X-Movie"] == b"Heat"
    ops = r.header_ops("/notes.txt", None)
    assert ops is not None and dict(ops.add)[b"X-Text"] == b"yes"
    merged = ops.apply([(b"Content-Type", b"text/plain"), (b"X-Frame-Options", b"SAMEORIGIN")])
    assert merged.count((b"X-Frame-Options", b"DENY")) == 1
    assert (b"X-Frame-Options", b"SAMEORIGIN") not in merged


RULE_ERRORS = [  # (file, text, line, reason)
    ("_redirects", "/ok /x\nnope /x 301\n", 2, "must start with /"),
    ("_redirects", "/a\n", 1, "has no target"),
    ("_redirects", "/a /b 999\n", 1, "status 999 is not supported"),
    ("_redirects", "/a /b abc\n", 1, "must be a status code"),
    ("_redirects", "/a /b 301 Country=au\n", 1, "conditions by country"),
    ("_redirects", "/a /b 301 extra\n", 1, "unexpected 'extra'"),
    ("_redirects", "/a/*/b/* /c 301\n", 1, "only one splat"),
    ("_redirects", "/a/:x/:x /c 301\n", 1, "appears twice"),
    ("_redirects", "/a/:1x /c 301\n", 1, "bad placeholder"),
    ("_redirects", "/a/:splat /c 301\n", 1, ":splat is the value of *"),
    ("_redirects", "/a /c/:nope 301\n", 1, "uses :nope"),
    ("_redirects", "/a/* https://x.example/:splat 200\n", 1, "proxying"),
    ("_redirects", "/a ftp://x.example/ 301\n", 1, "only http:// and https://"),
    ("_redirects", "/a?x=1 /b 301\n", 1, "no query"),
    ("_redirects", "# c\n\n/a x=:v /b/:w 301\n", 3, "uses :w"),
    ("_headers", "  X-A: b\n", 1, "before any path"),
    ("_headers", "/a\n  X-A b\n", 2, "expected Name: value"),
    ("_headers", "/a\n  X A: b\n", 2, "not a valid header name"),
    ("_headers", "/a\n  Content-Length: 5\n", 2, "set by the server"),
    ("_headers", "/a\n  X-A:\n", 2, "empty value"),
    ("_headers", "/a\n  X-A: caf\u00e9\u2603\n", 2, "not ISO-8859-1"),
    ("_headers", "/a b\n", 1, "one word"),
    ("_headers", "\n/a\n  X-A: ok\nb/\n", 4, "must start with /"),
    ("_headers", "/a/:x\n  X-A: :y\n", 2, "uses :y"),
    ("_headers", "/a\n  ! Bad Name\n", 2, "not a valid header name"),
]


@pytest.mark.parametrize(("name", "text", "line", "reason"), RULE_ERRORS)
def test_rule_errors_name_the_line(name: str, text: str, line: int, reason: str) -> None:
    parse = {"_redirects": parse_redirects, "_headers": parse_headers}[name]
    with pytest.raises(RuleError) as exc:
        parse(text, f"/srv/{name}")
    assert exc.value.line == line, exc.value
    assert reason in str(exc.value)
    assert str(exc.value).startswith(f"/srv/{name}:{line}: ")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_rule_parsers_take_any_text_without_crashing(text: str) -> None:
    for parse in (parse_redirects, parse_headers):
        try:
            rules = parse(text, "f")
        except RuleError:
            continue
        r = RuleSet(tuple(rules)) if parse is parse_redirects else RuleSet((), tuple(rules))
        r.match("/a/b", b"id=1", None)
        r.header_ops("/a/b", "h")


# ---------------------------------------------------------------- the TOML side


def test_toml_rules_and_sites_with_lines(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "index.html").write_text("A\n")
    (b / "index.html").write_text("B\n")
    conf = tmp_path / "c.toml"
    conf.write_text(
        'stack = "linux"\n'
        "[[sites]]\n"
        'name = "alpha"\n'
        'server_names = ["alpha.test", "*.alpha.test"]\n'
        f'root = "{a}"\n'
        'spa_fallback = "/index.html"\n'
        "[[sites.redirects]]\n"
        'from = "/old/*"\n'
        'to = "/new/:splat"\n'
        "status = 308\n"
        "[[sites.headers]]\n"
        'for = "/*"\n'
        'values = { X-Site = "alpha", Link = ["</a>", "</b>"] }\n'
        "[[sites]]\n"
        'name = "beta"\n'
        f'root = "{b}"\n'
        "default = true\n"
    )
    cfg = load({}, {}, conf)
    vh = vhost_config(cfg)
    assert [s.name for s in vh.sites] == ["alpha", "beta"] and vh.default == "beta"
    alpha = vh.by_name("alpha")
    assert alpha.server_names == ("alpha.test", "*.alpha.test")
    m = alpha.rules.match("/old/x", None, None)
    assert m is not None and m.target == b"/new/x" and m.rule.status == 308
    ops = alpha.rules.header_ops("/", None)
    assert ops is not None and dict(ops.add)[b"Link"] == b"</a>, </b>"
    # a mistake names the file and the line of its table
    conf.write_text(conf.read_text().replace('to = "/new/:splat"', 'to = "/new/:nope"'))
    with pytest.raises(ConfigError) as exc:
        vhost_config(load({}, {}, conf))
    assert f"{conf}:7" in str(exc.value) and "uses :nope" in str(exc.value)


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ('[[sites]]\nname = "Bad Name"\nroot = "."\n', "sites[0].name", "needs a name"),
        ('[[sites]]\nname = "a"\n', "sites[0].root", "needs root"),
        ('[[sites]]\nname = "a"\nroot = "."\nserver_names = ["a b"]\n', "server_names", "not a"),
        (
            '[[sites]]\nname = "a"\nroot = "."\nserver_names = ["x.test"]\n'
            '[[sites]]\nname = "b"\nroot = "."\nserver_names = ["x.test"]\n',
            "sites[1].server_names",
            "already a name of site 'a'",
        ),
        (
            '[[sites]]\nname = "a"\nroot = "."\n[[sites]]\nname = "a"\nroot = "."\n',
            "name",
            "earlier",
        ),
        (
            '[[sites]]\nname = "a"\nroot = "."\ndefault = true\n'
            '[[sites]]\nname = "b"\nroot = "."\ndefault = true\n',
            "sites",
            "more than one default",
        ),
        ('[[sites]]\nname = "a"\nroot = "."\nfoo = 1\n', "sites[0].foo", "unknown key"),
        ('spa_fallback = "/x"\n[[sites]]\nname = "a"\nroot = "."\n', "spa_fallback", "each site"),
        ('[[redirects]]\nfrom = "/a"\n', "rules", "needs from and to"),
        ('[[headers]]\nfor = "/a"\nvalues = { Date = "x" }\n', "rules", "set by the server"),
        ("redirects = 5\n", "redirects", "array of tables"),
    ],
)
def test_toml_site_errors(tmp_path: Path, body: str, key: str, reason: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('stack = "linux"\n' + body.replace('root = "."', f'root = "{tmp_path}"'))
    with pytest.raises(ConfigError) as exc:
        vhost_config(load({}, {}, conf))
    assert key in str(exc.value) and reason in str(exc.value), exc.value


def test_spa_fallback_and_log_options_from_flags_and_env(tmp_path: Path) -> None:
    cfg = load(
        {"spa_fallback": "/index.html", "access_log": "-"},
        {"MTCP_APPLIANCE_LOG_FORMAT": "json", "MTCP_APPLIANCE_EVENT_LOG_FORMAT": "json"},
    )
    assert (cfg.spa_fallback, str(cfg.access_log), cfg.log_format, cfg.event_log_format) == (
        "/index.html",
        "-",
        "json",
        "json",
    )
    with pytest.raises(ConfigError, match="spa_fallback .*must be a path"):
        load({"spa_fallback": "index.html"}, {})
    with pytest.raises(ConfigError, match="log_format"):
        load({"log_format": "xml"}, {})


# ---------------------------------------------------------------- requests


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "site"
    r.mkdir()
    (r / "index.html").write_text("<h1>home</h1>\n")
    (r / "small.txt").write_text("small\n")
    (r / "gone.html").write_text("<p>gone</p>\n")
    (r / "404.html").write_text("<p>site 404</p>\n")
    (r / "app").mkdir()
    (r / "app" / "index.html").write_text("<p>app</p>\n")
    (r / "assets").mkdir()
    (r / "assets" / "a.js").write_text("js\n")
    (r / "_redirects").write_text(REDIRECTS)
    (r / "_headers").write_text(HEADERS)
    return r


def sites_for(root: Path, **kw: object) -> Sites:
    return single(SiteConfig(root=root), **kw).compile().build()  # type: ignore[arg-type]


def ask(
    s: Sites,
    target: str,
    *hdrs: tuple[bytes, bytes],
    method: bytes = b"GET",
    host: bytes = b"x.test",
) -> Reply:
    return s.respond(method, target.encode(), {b"host": host, **dict(hdrs)}, T0)


def hdr(reply: Reply, name: bytes) -> bytes | None:
    found = [v for k, v in reply.headers if k.lower() == name.lower()]
    assert len(found) <= 1, (name, reply.headers)
    return found[0] if found else None


def body(reply: Reply) -> bytes:
    return b"".join(p for p in reply.parts if isinstance(p, bytes))


def test_redirects_rewrites_and_shadowing(root: Path) -> None:
    s = sites_for(root)
    r = ask(s, "/home?x=1")
    assert r.status == 301 and hdr(r, b"location") == b"/?x=1"
    assert hdr(r, b"cache-control") == b"public, max-age=60"  # cacheable like a file
    r = ask(s, "/news/2024/05/hello")
    assert r.status == 308 and hdr(r, b"location") == b"/blog/2024-05/hello"
    r = ask(s, "/app/some/route")  # rewrite: the app's index, a file response
    assert r.status == 200 and body(r) == b"<p>app</p>\n" and hdr(r, b"etag")
    r2 = ask(s, "/app/other", (b"if-none-match", hdr(r, b"etag") or b""))
    assert r2.status == 304  # conditional like a file
    r = ask(s, "/app/index.html")  # the file shadows the unforced rule: it is itself
    assert r.status == 200 and body(r) == b"<p>app</p>\n"
    r = ask(s, "/index.html")  # "/index.html /nope 301" is shadowed by the file
    assert r.status == 200 and body(r) == b"<h1>home</h1>\n"
    r = ask(s, "/forced")  # forced: applies although nothing is there (and would anyway)
    assert r.status == 200 and body(r) == b"small\n"
    r = ask(s, "/legacy/whatever", (b"if-none-match", b"*"), (b"range", b"bytes=0-1"))
    assert r.status == 404 and body(r) == b"<p>gone</p>\n" and hdr(r, b"etag") is None
    r = ask(s, "/gone")
    assert r.status == 410 and body(r) == b"<p>gone</p>\n"
    r = ask(s, "/store?id=42")
    assert r.status == 302 and hdr(r, b"location") == b"/products/42"
    r = ask(s, "/whatever", host=b"old.example")
    assert r.status == 301 and hdr(r, b"location") == b"https://new.example/whatever"
    r = ask(s, "/nothing-here")
    assert r.status == 404 and body(r) == b"<p>site 404</p>\n"
    for f in ("/_redirects", "/_headers"):
        assert ask(s, f).status == 404  # the rule files are not served
    assert ask(s, "/home", method=b"POST").status == 405


def test_forced_rule_shadows_a_real_file(root: Path) -> None:
    (root / "_redirects").write_text("/small.txt /index.html 301!\n/index.html /x 301\n")
    s = sites_for(root)
    r = ask(s, "/small.txt")
    assert r.status == 301 and hdr(r, b"location") == b"/index.html"
    assert ask(s, "/index.html").status == 200


def test_header_rules_merge_with_the_defaults(root: Path) -> None:
    s = sites_for(root)
    r = ask(s, "/assets/a.js")
    # the rule replaces the default Cache-Control; the rest of the file headers stay
    assert hdr(r, b"cache-control") == b"public, max-age=31536000, immutable"
    assert hdr(r, b"content-type") == b"text/javascript" and hdr(r, b"etag")
    assert hdr(r, b"x-frame-options") is None  # detached under /assets/
    assert hdr(r, b"content-security-policy") == b"default-src 'self'"
    assert r.head is not None and b"immutable" in r.head and b"max-age=60" not in r.head
    r2 = ask(s, "/assets/a.js")
    assert r2.headers is r.headers  # merged once, reused while the file is cached
    r = ask(s, "/assets/a.js", (b"if-none-match", hdr(r, b"etag") or b""))
    assert r.status == 304 and hdr(r, b"cache-control") == b"public, max-age=31536000, immutable"
    r = ask(s, "/")
    assert (
        hdr(r, b"x-frame-options") == b"DENY" and hdr(r, b"cache-control") == b"public, max-age=60"
    )
    r = ask(s, "/nothing")  # an error page gets them too
    assert r.status == 404 and hdr(r, b"x-frame-options") == b"DENY"


def test_spa_fallback_keeps_files_and_missing_assets(root: Path) -> None:
    (root / "_redirects").unlink()
    s = sites_for(root, spa_fallback="/index.html")
    r = ask(s, "/dashboard/settings")
    assert r.status == 200 and body(r) == b"<h1>home</h1>\n" and hdr(r, b"etag")
    assert ask(s, "/small.txt").status == 200 and body(ask(s, "/small.txt")) == b"small\n"
    assert body(ask(s, "/app/")) == b"<p>app</p>\n"  # a real folder's index
    assert ask(s, "/missing.js").status == 404  # an asset with an extension
    assert ask(s, "/assets/logo.png").status == 404
    assert ask(s, "/.git/config").status == 404  # hidden paths never fall back
    r = ask(s, "/x", method=b"HEAD")
    assert r.status == 200


def test_rules_recompile_when_files_change_and_keep_old_ones_on_error(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (root / "_redirects").write_text("/a /b 301\n")
    s = sites_for(root)
    assert hdr(ask(s, "/a"), b"location") == b"/b"
    (root / "_redirects").write_text("/a /c 302\n")
    os.utime(root / "_redirects", ns=(time.time_ns(), time.time_ns() + 10**9))
    r = s.respond(b"GET", b"/a", {b"host": b"x"}, T0 + 2)
    assert r.status == 302 and hdr(r, b"location") == b"/c"
    (root / "_redirects").write_text("/a /d 301\nbroken line here\n")
    os.utime(root / "_redirects", ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    with caplog.at_level("ERROR", logger="mtcp_appliance"):
        r = s.respond(b"GET", b"/a", {b"host": b"x"}, T0 + 4)
    assert r.status == 302 and hdr(r, b"location") == b"/c"  # the old rules stay
    assert "_redirects:2" in caplog.text and "keeping the old rules" in caplog.text


def test_virtual_hosts_by_exact_name_wildcard_and_default(tmp_path: Path) -> None:
    made = {}
    for name in ("main", "blog", "shop"):
        d = tmp_path / name
        d.mkdir()
        (d / "index.html").write_text(f"{name}\n")
        made[name] = d
    vh = VhostConfig(
        (
            VirtualSite("main", ("main.test",), SiteConfig(root=made["main"])),
            VirtualSite("blog", ("blog.test", "*.blog.test"), SiteConfig(root=made["blog"])),
            VirtualSite("shop", ("*.shop.test", "a.b.shop.test"), SiteConfig(root=made["shop"])),
        ),
        "main",
    ).compile()
    s = vh.build()
    for host, want in (
        (b"blog.test", "blog"),
        (b"BLOG.test:8080", "blog"),
        (b"blog.test.", "blog"),
        (b"x.blog.test", "blog"),
        (b"y.x.blog.test", "blog"),
        (b"shop.test", "main"),  # *.shop.test is not shop.test
        (b"a.shop.test", "shop"),
        (b"a.b.shop.test", "shop"),
        (b"elsewhere.test", "main"),
        (b"198.18.0.2", "main"),
    ):
        r = s.respond(b"GET", b"/", {b"host": host}, T0)
        assert r.site == want and body(r) == f"{want}\n".encode(), host
    r = s.respond(b"GET", b"http://blog.test/", {b"host": b"main.test"}, T0)
    assert r.site == "blog"  # an absolute-form target's host wins (RFC 9112 3.2.2)
    assert normalize_host(b"[::1]:80") == "[::1]" and normalize_host(b"") is None


def test_access_log_json_and_combined_with_the_site(tmp_path: Path, root: Path) -> None:
    (root / "_redirects").unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text("o\n")
    for fmt in ("json", "combined"):
        log = tmp_path / f"access.{fmt}"
        vh = VhostConfig(
            (
                VirtualSite("main", (), SiteConfig(root=root)),
                VirtualSite("other", ("other.test",), SiteConfig(root=other)),
            ),
            "main",
            access_log=log,
            log_format=fmt,
        ).compile()
        s = vh.build()
        records: list[object] = []
        conn = Connection(s, T0, peer="198.18.0.1", on_request=records.append)
        conn.receive(
            b"GET /index.html HTTP/1.1\r\nHost: other.test\r\nUser-Agent: t/1\r\n"
            b'Referer: http://r.test/"q"\r\n\r\n',
            T0,
        )
        conn.receive(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", T0)
        s.flush()
        lines = log.read_text().splitlines()
        assert len(lines) == 2
        assert [r.site for r in records] == ["other", "main"]  # type: ignore[attr-defined]
        if fmt == "json":
            a, b = (json.loads(x) for x in lines)
            assert a["remote_addr"] == "198.18.0.1" and a["request"] == "GET /index.html HTTP/1.1"
            assert (a["method"], a["uri"], a["protocol"]) == ("GET", "/index.html", "HTTP/1.1")
            assert (a["status"], a["body_bytes_sent"], a["site"], a["host"]) == (
                200,
                2,
                "other",
                "other.test",
            )
            assert a["user_agent"] == "t/1" and a["referer"] == 'http://r.test/"q"'
            assert a["time"].endswith("Z") and b["status"] == 404 and b["site"] == "main"
        else:
            assert lines[0].startswith("198.18.0.1 - - [")
            assert lines[0].endswith(
                '"GET /index.html HTTP/1.1" 200 2 "http://r.test/\\x22q\\x22" "t/1" "other"'
            )
        s.close()


def test_access_log_to_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    log = AccessLog("-", "json")
    for i in range(300):  # more than one pipe-sized write
        log.write("1.2.3.4", b"GET /%d HTTP/1.1" % i, 200, 5, None, None, "s", b"h")
    log.close()
    out = capfd.readouterr().out.splitlines()
    assert [json.loads(x)["uri"] for x in out] == [f"/{i}" for i in range(300)]


def test_rule_files_are_compiled_once_not_per_request(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = sites_for(root)
    calls = []
    real = rules_mod.compile_rules
    monkeypatch.setattr(
        rules_mod, "compile_rules", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    for i in range(200):
        s.respond(b"GET", b"/home", {b"host": b"x"}, T0 + i * 0.001)
    assert calls == []


def test_rule_files_are_left_out_of_the_root_listing(root: Path) -> None:
    (root / "index.html").unlink()
    (root / "docs").mkdir()
    (root / "docs" / "_headers").write_text("not a rule file here\n")
    s = sites_for(root)
    listing = body(ask(s, "/"))
    assert b"small.txt" in listing and b"_redirects" not in listing and b"_headers" not in listing
    assert b"_headers" in body(ask(s, "/docs/"))  # only the root's are rule files
    assert ask(s, "/docs/_headers").status == 200


@pytest.mark.parametrize(
    "target",
    [
        "/_redirects",
        "/%5Fredirects",
        "/%5fheaders",
        "/x/../_headers",
        "http://h.test/_redirects",
        "/_redirects?x",
    ],
)
def test_rule_files_are_never_served_however_they_are_named(root: Path, target: str) -> None:
    for rules in ("with rules", "empty rules"):
        if rules == "empty rules":
            (root / "_redirects").write_text("# nothing\n")
            (root / "_headers").write_text("")
        s = sites_for(root)
        assert ask(s, target).status == 404, (target, rules)
