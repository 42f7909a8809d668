"""Configuration: a TOML file < MTCP_APPLIANCE_* variables < flags; every bad value is
named with its key, where it came from and why, and nothing starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance import caps, cli, config, sites, supervisor
from appliance.config import Config, ConfigError


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Runs serve without starting anything: the supervisor records its config."""
    got: list[Config] = []

    def run(self: supervisor.Supervisor) -> int:
        got.append(self.config)
        return 0

    monkeypatch.setattr(supervisor.Supervisor, "run", run)
    for name in list(os.environ):
        if name.startswith("MTCP_APPLIANCE_"):
            monkeypatch.delenv(name)
    return got


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[Config]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    path = _toml(
        tmp_path,
        f"""
stack = "linux"
port = 1111
cores = 1
metrics = "127.0.0.1:9201"
root = "{site}"
drain_timeout = 3
""",
    )
    monkeypatch.setenv("MTCP_APPLIANCE_PORT", "2222")
    monkeypatch.setenv("MTCP_APPLIANCE_METRICS", "127.0.0.1:9202")
    monkeypatch.setenv("MTCP_APPLIANCE_DRAIN_TIMEOUT", "4.5")
    assert cli.main(["serve", "--config", str(path), "--port", "3333"]) == 0
    cfg = started[-1]
    # stack: file (the flag's default does not override it); port: flag; metrics: env
    assert (cfg.stack, cfg.port, cfg.cores, cfg.root) == ("linux", 3333, 1, site)
    assert (cfg.metrics_host, cfg.metrics_port, cfg.drain_timeout) == ("127.0.0.1", 9202, 4.5)
    assert cfg.sources["port"] == "--port"
    assert cfg.sources["metrics"] == "MTCP_APPLIANCE_METRICS"
    assert cfg.sources["cores"] == str(path)

    # without the flag the environment wins, without both the file
    assert cli.main(["serve", "--config", str(path)]) == 0
    assert started[-1].port == 2222
    monkeypatch.delenv("MTCP_APPLIANCE_PORT")
    assert cli.main(["serve", "--config", str(path)]) == 0
    assert started[-1].port == 1111
    # the file named by the environment, a flag of each kind over it
    monkeypatch.setenv("MTCP_APPLIANCE_CONFIG", str(path))
    assert cli.main(["serve", "--stack", "mtcp", "--no-priority", "--cores", "2"]) == 0
    cfg = started[-1]
    assert (cfg.stack, cfg.tx_priority, cfg.cores, cfg.port) == ("mtcp", False, 2, 1111)


def test_defaults_are_the_embedded_appliance(started: list[Config]) -> None:
    assert cli.main(["serve"]) == 0
    cfg = started[-1]
    assert (cfg.stack, cfg.backend, cfg.iface, cfg.ip) == ("mtcp", "tap", "mtcp0", "198.18.0.2/24")
    assert (cfg.tap_host, cfg.port, cfg.root) == ("198.18.0.1/24", 80, config.DEFAULT_ROOT)
    assert (cfg.metrics_host, cfg.metrics_port) == ("127.0.0.1", 9100)
    assert cfg.cores == len(config.available_cpus()) and cfg.tx_priority
    assert cfg.serve_url == "http://198.18.0.2:80/" and cfg.congestion == "cubic"
    assert cli.main(["serve", "--congestion", "newreno"]) == 0
    assert started[-1].congestion == "newreno"
    assert cli.main(["serve", "--stack", "linux"]) == 0
    assert (started[-1].ip, started[-1].port) == ("127.0.0.1", 8080)
    # a TAP on another subnet gets that subnet's first host as its host side
    assert cli.main(["serve", "--ip", "198.19.7.9/24"]) == 0
    assert started[-1].tap_host == "198.19.7.1/24"


def test_values_of_every_kind_parse(tmp_path: Path) -> None:
    env = {
        "MTCP_APPLIANCE_NO_PRIORITY": "yes",
        "MTCP_APPLIANCE_CORES": "2",
        "MTCP_APPLIANCE_ACCESS_LOG": str(tmp_path / "access.log"),
        "MTCP_APPLIANCE_PCAP": str(tmp_path / "core%u.pcap"),
        "MTCP_APPLIANCE_GATEWAY": "198.18.0.254",
        "MTCP_APPLIANCE_BACKEND": "afpacket",
        "MTCP_APPLIANCE_IFACE": "veth0",
        "MTCP_APPLIANCE_CONGESTION": "newreno",
    }
    cfg = config.load({}, env)
    assert cfg.congestion == "newreno"
    assert (cfg.tx_priority, cfg.cores, cfg.gateway) == (False, 2, "198.18.0.254")
    assert (cfg.access_log, cfg.pcap) == (tmp_path / "access.log", str(tmp_path / "core%u.pcap"))
    assert (cfg.backend, cfg.iface, cfg.tap_host) == ("afpacket", "veth0", None)


# (where: "file" | "env" | "flag", key or variable, value, words the message must hold)
BAD: list[tuple[str, str, Any, str]] = [
    ("file", "stack", "bsd", "stack (from {file}): must be one of mtcp, linux, got 'bsd'"),
    ("env", "STACK", "bsd", "stack (from MTCP_APPLIANCE_STACK): must be one of mtcp, linux"),
    ("flag", "--backend", "pair", "invalid choice: 'pair'"),
    ("file", "backend", "pair", "backend (from {file}): must be one of tap, afpacket, got 'pair'"),
    ("file", "iface", "a-very-long-interface-name", "iface (from {file}): must be an interface"),
    ("flag", "--backend", "afpacket", "iface: the afpacket backend needs an interface (--iface"),
    ("env", "IP", "300.1.1.1/24", "ip (from MTCP_APPLIANCE_IP): must be an IPv4 address/prefix"),
    (
        "flag",
        "--gateway",
        "198.18.9.1",
        "gateway (from --gateway): 198.18.9.1 is not in the subnet",
    ),
    ("file", "gateway", "nope", "gateway (from {file}): must be an IPv4 address"),
    ("file", "port", "80", "port (from {file}): must be a TOML integer, got '80'"),
    ("file", "port", 0, "port (from {file}): must be an integer 1..65535, got 0"),
    ("env", "PORT", "http", "port (from MTCP_APPLIANCE_PORT): must be an integer 1..65535"),
    ("flag", "--port", "70000", "port (from --port): must be an integer 1..65535, got 70000"),
    ("file", "root", 5, "root (from {file}): must be a TOML string, got 5"),
    ("file", "root", "/no/such/folder", "root (from {file}): /no/such/folder: not a folder"),
    ("flag", "--cores", "0", "cores (from --cores): must be an integer 1..256, got 0"),
    ("env", "METRICS", "9100", "metrics (from MTCP_APPLIANCE_METRICS): must be host:port"),
    ("file", "metrics", "example.org:9100", "metrics (from {file}): host must be an IP address"),
    ("flag", "--access-log", "/no/such/dir/a.log", "access_log (from --access-log): its folder"),
    ("file", "no_priority", "yes", "no_priority (from {file}): must be a TOML boolean"),
    ("env", "NO_PRIORITY", "maybe", "no_priority (from MTCP_APPLIANCE_NO_PRIORITY): must be true"),
    ("flag", "--pcap", "/no/such/dir/x.pcap", "pcap (from --pcap): its folder /no/such/dir"),
    ("env", "TX_RATE_MBPS", "1G", "tx_rate_mbps (from MTCP_APPLIANCE_TX_RATE_MBPS): must be an"),
    ("file", "tx_rate_mbps", -5, "tx_rate_mbps (from {file}): must be an integer 0..1000000"),
    ("flag", "--sndbuf", "1000", "sndbuf (from --sndbuf): must be an integer 4096..67108864"),
    ("file", "congestion", "bbr", "congestion (from {file}): must be one of cubic, newreno"),
    ("env", "CONGESTION", "reno", "congestion (from MTCP_APPLIANCE_CONGESTION): must be one of"),
    ("env", "DRAIN_TIMEOUT", "-1", "drain_timeout (from MTCP_APPLIANCE_DRAIN_TIMEOUT): must be a"),
    ("flag", "--tap-host", "198.18.0.2/24", "tap_host (from --tap-host): 198.18.0.2/24 is the"),
    ("file", "lingering_close", "yes", "lingering_close (from {file}): must be one of on, off,"),
    ("env", "LINGERING_TIME", "0", "lingering_time (from MTCP_APPLIANCE_LINGERING_TIME): must"),
    ("file", "lingering_timeout", "5", "lingering_timeout (from {file}): must be a TOML number"),
    ("file", "frobnicate", 1, "frobnicate (from {file}): unknown key; known keys: stack,"),
    ("env", "FROBNICATE", "1", "MTCP_APPLIANCE_FROBNICATE (from environment): unknown variable"),
    ("file", "[", "", "config (from --config): {file}: not valid TOML"),
]


@pytest.mark.parametrize(
    ("where", "key", "value", "message"), BAD, ids=[f"{w}-{k}-{v}" for w, k, v, _ in BAD]
)
def test_a_bad_setting_is_named_and_nothing_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[Config],
    where: str,
    key: str,
    value: Any,
    message: str,
) -> None:
    path = tmp_path / "appliance.toml"
    argv = ["serve", "--config", str(path)]
    if where == "file":
        if key == "[":
            path.write_text("[\n")
        else:
            path.write_text(f"{key} = {value!r}\n".replace("'", '"'))
    else:
        path.write_text("")
        if where == "env":
            monkeypatch.setenv(f"MTCP_APPLIANCE_{key}", value)
        else:
            argv += [key, value]
    if key == "--backend" and value == "pair":  # argparse's own choice check
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    else:
        assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(file=path) in err, err
    assert started == []


def test_the_console_script_exits_non_zero_on_a_bad_variable() -> None:
    exe = str(Path(sys.executable).parent / "mtcp-appliance")
    res = subprocess.run(
        [exe, "serve"],
        env={"PATH": "/usr/bin:/bin", "MTCP_APPLIANCE_PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "mtcp-appliance: config error: port (from MTCP_APPLIANCE_PORT): "
        "must be an integer 1..65535, got 'eighty'"
    )
    assert res.stdout == ""


def test_a_missing_capability_is_named_with_the_way_around_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(caps, "effective", lambda *a: 0)
    for name in list(os.environ):
        if name.startswith("MTCP_APPLIANCE_"):
            monkeypatch.delenv(name)
    assert cli.main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "the tap backend needs a capability that this process lacks" in err
    assert "missing capability: CAP_NET_ADMIN" in err
    assert "mtcp-appliance serve --stack linux --port 8080" in err
    assert cli.main(["serve", "--backend", "afpacket", "--iface", "lo"]) == 1
    assert "missing capability: CAP_NET_RAW" in capsys.readouterr().err


def test_config_errors_say_key_source_and_reason() -> None:
    err = ConfigError("port", "must be an integer 1..65535, got 0", "--port")
    assert str(err) == "port (from --port): must be an integer 1..65535, got 0"
    assert (err.key, err.source) == ("port", "--port")


@pytest.mark.parametrize("command", ["serve", "doctor"])
def test_help_lists_every_key(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for key in config.KEYS:
        assert config.flag_name(key) in out, key



def test_exhaustion_options_reach_the_config(started: list[Config]) -> None:
    args = ["serve", "--stack", "mtcp", "--cores", "1", "--mem-budget-mb", "256"]
    assert cli.main([*args, "--max-conns-per-source", "64"]) == 0
    cfg = started[-1]
    assert (cfg.mem_budget_mb, cfg.max_conns_per_source) == (256, 64)
    assert cfg.sources["mem_budget_mb"] == "--mem-budget-mb"
    assert cli.main(["serve", "--stack", "mtcp", "--mem-budget-mb", "1"]) == 2
    assert cli.main(["serve", "--stack", "linux", "--max-conns-per-source", "3"]) == 2


def test_lingering_close_settings_reach_the_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[Config]
) -> None:
    """lingering_close / lingering_time / lingering_timeout: file < environment < flag, then
    into the SiteConfig every worker's HTTP server gets."""
    path = _toml(tmp_path, 'stack = "linux"\nlingering_close = "always"\nlingering_time = 12\n')
    monkeypatch.setenv("MTCP_APPLIANCE_LINGERING_TIMEOUT", "2.5")
    assert cli.main(["serve", "--config", str(path), "--lingering-time", "7"]) == 0
    cfg = started[-1]
    assert (cfg.lingering_close, cfg.lingering_time, cfg.lingering_timeout) == ("always", 7, 2.5)
    site = sites.vhost_config(cfg).config  # what the workers get (the default site)
    assert (site.lingering_close, site.lingering_time_s, site.lingering_timeout_s) == (
        "always", 7.0, 2.5)  # fmt: skip
    # the defaults are nginx's
    d = Config()
    assert (d.lingering_close, d.lingering_time, d.lingering_timeout) == ("on", 30.0, 5.0)
