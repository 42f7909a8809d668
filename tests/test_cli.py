"""`mtcp-appliance serve`: argument parsing, and the placeholder --stack linux server."""

from __future__ import annotations

import errno
import http.client
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import cli
from appliance.http.connection import Connection
from appliance.http.linux import StaticServer
from mtcp_core.testing import netns


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<h1>hello</h1>\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("plain\n")
    (tmp_path / ".secret").write_text("no\n")
    return tmp_path


@pytest.fixture
def server(site: Path) -> Iterator[tuple[str, int]]:
    srv = StaticServer(site, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[:2]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_serve_parses_the_stack_options() -> None:
    argv = "serve --stack linux --backend afpacket --iface veth0 --ip 198.18.0.2/24 --port 8081"
    args = cli.build_parser().parse_args([*argv.split(), "--root", "/srv"])
    got = (args.stack, args.backend, args.iface, args.ip, args.port, args.root)
    assert got == ("linux", "afpacket", "veth0", "198.18.0.2/24", 8081, Path("/srv"))
    defaults = cli.build_parser().parse_args(["serve"])
    assert (defaults.stack, defaults.backend, defaults.root) == ("mtcp", "tap", cli.DEFAULT_ROOT)
    assert (cli.DEFAULT_ROOT / "index.html").is_file()


def test_mtcp_stack_names_the_missing_capability() -> None:
    eperm = OSError(errno.EPERM, "Operation not permitted")
    assert "CAP_NET_ADMIN" in (cli._missing_capability(eperm, "tap") or "")
    assert "CAP_NET_RAW" in (cli._missing_capability(eperm, "afpacket") or "")
    assert cli._missing_capability(OSError(errno.ENODEV, "no device"), "tap") is None


def test_mtcp_afpacket_needs_an_interface(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--backend", "afpacket"]) == 2
    assert "--iface" in capsys.readouterr().err


@pytest.mark.requires_root
def test_default_serve_runs_on_a_tap_in_a_namespace(netlab: netns.Lab) -> None:
    """The README's run command (serve, no arguments): the default site on the user-level
    stack behind a TAP device, fetched by the kernel's curl on the host side."""
    ns = netlab.namespace("run")
    proc = ns.popen(
        # the installed console script, run away from the checkout (whose folders would
        # shadow the installed packages)
        [str(Path(sys.executable).parent / "mtcp-appliance"), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://198.18.0.2:80/" in line, line
        out = ns.run(["curl", "-sS", "--max-time", "10", "-D", "-", "http://198.18.0.2/"]).stdout
        assert out.startswith("HTTP/1.1 200"), out
        assert (cli.DEFAULT_ROOT / "index.html").read_text() in out
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def test_missing_root_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--stack", "linux", "--root", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_linux_stack_serves_get_and_head_with_keep_alive(server: tuple[str, int]) -> None:
    conn = http.client.HTTPConnection(*server, timeout=5)
    conn.request("GET", "/")
    resp = conn.getresponse()
    got = (resp.status, resp.getheader("content-type"), resp.read())
    assert got == (200, "text/html", b"<h1>hello</h1>\n")
    conn.request("HEAD", "/docs/a.txt")  # same connection
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("content-length"), resp.read()) == (200, "6", b"")
    conn.request("HEAD", "/missing")
    resp = conn.getresponse()
    assert (resp.status, resp.reason, resp.read()) == (404, "Not Found", b"")
    conn.close()


def test_connection_is_sans_io(site: Path) -> None:
    conn = Connection(site)
    pipelined = b"GET /docs/a.txt HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
    out = conn.receive(pipelined[:10]) + conn.receive(pipelined[10:])
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 2 and out.endswith(b"\r\n\r\n")
    assert b"plain\n" in out and not conn.closed
    assert conn.receive(b"NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert conn.closed


def test_symlinks_out_of_the_root_are_not_served(
    site: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("secret\n")
    (site / "link.txt").symlink_to(outside)
    out = Connection(site).receive(b"GET /link.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404 ") and b"secret" not in out


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/missing", 404),
        ("GET", "/.secret", 404),
        ("GET", "/docs/../../etc/passwd", 404),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd", 404),
        ("POST", "/", 405),
    ],
)
def test_linux_stack_refuses(
    server: tuple[str, int], method: str, target: str, status: int
) -> None:
    conn = http.client.HTTPConnection(*server, timeout=5)
    conn.request(method, target)
    assert conn.getresponse().status == status
    conn.close()
