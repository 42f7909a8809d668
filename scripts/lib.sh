# Shared by scripts/run, scripts/test and scripts/test-asan (sourced, not run).
# setup_system [runtime]: installs the Debian packages that are missing (as root, apt-get).
# setup_venv DIR [MODE]: creates the virtual environment DIR if needed and (re)installs the
# project into it, which builds mtcp_core._native: with its test extras, or with
# SETUP_EXTRAS="" the runtime dependencies only (scripts/run). MODE "editable" (default) is
# setuptools' strict editable mode: a tree of links to the sources in build/__editable__.*/
# (http/ appears there as appliance/http/) holding the built _native; edits to existing .py
# files are live, new files and C changes need a reinstall. MODE "copy" installs a plain
# copy into the venv. The install is skipped when the venv's stamp says that nothing it
# depends on changed (project_stamp); MTCP_FORCE_SETUP=1 installs anyway.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Debian package for each command the appliance uses (building its C core, the TAP's
# address, doctor's checks, --nft-guard) ...
RUNTIME_COMMANDS=("gcc gcc" "ip iproute2" "ethtool ethtool" "nft nftables" "ps procps")
# ... and for each one its tests and benchmarks use too
SYSTEM_COMMANDS=(
  "${RUNTIME_COMMANDS[@]}" "ping iputils-ping" "tcpdump tcpdump" "curl curl" "chromium chromium"
  # the benchmark (bench/web_bench.py, make bench) and its quick test (tests/test_bench.py)
  "wrk wrk" "nginx nginx-light" "lighttpd lighttpd" "taskset util-linux" "openssl openssl"
)

apt_install() {
  (($# == 0)) && return 0
  [[ $EUID -eq 0 ]] || die "missing packages: $*; run as root, or install them first"
  command -v apt-get >/dev/null || die "missing packages: $* (no apt-get: install them by hand)"
  say "== apt-get install $*"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Python.h of $PYTHON is there, and $PYTHON is 3.11 or newer (dies if not): one start of
# the interpreter, as scripts/run pays for each.
python_has_headers() {
  local rc=0
  "$PYTHON" -c 'import os, sys, sysconfig
if sys.version_info < (3, 11): sys.exit(2)
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || rc=$?
  ((rc == 2)) && die "$PYTHON is $("$PYTHON" --version 2>&1); the project needs Python 3.11 or newer"
  return "$rc"
}

# setup_system [runtime]: the Debian packages of SYSTEM_COMMANDS (or, with "runtime", of
# RUNTIME_COMMANDS only: what scripts/run needs).
setup_system() {
  local missing=() entry cmd pkg commands=("${SYSTEM_COMMANDS[@]}")
  [[ ${1:-} == runtime ]] && commands=("${RUNTIME_COMMANDS[@]}")
  command -v "$PYTHON" >/dev/null || missing+=(python3)
  for entry in "${commands[@]}"; do
    read -r cmd pkg <<<"$entry"
    command -v "$cmd" >/dev/null || missing+=("$pkg")
  done
  local headers=1
  if command -v "$PYTHON" >/dev/null && ! python_has_headers; then
    missing+=(python3-dev)
    headers=0
  fi
  # bench/tls_load.c (the benchmark's HTTPS handshake client) is built against OpenSSL
  [[ -e /usr/include/openssl/ssl.h ]] || missing+=(libssl-dev)
  apt_install "${missing[@]}"
  command -v "$PYTHON" >/dev/null || die "no $PYTHON"
  ((headers)) || python_has_headers || die "no Python headers (Python.h) for $PYTHON"
}

# setup_containers: podman for tests/test_container.py (Debian's podman, buildah, runc,
# debootstrap for the base image, fuse-overlayfs), and /etc/containers/containers.conf when
# there is none: runc (crun fails on hybrid cgroup hierarchies) and explicit ulimits (podman
# run fails without them here). An existing containers.conf is never changed; if it lacks
# these settings, a note says what to add.
CONTAINERS_CONF=${CONTAINERS_CONF:-/etc/containers/containers.conf}
setup_containers() {
  local missing=() entry cmd pkg
  for entry in "podman podman" "buildah buildah" "runc runc" "debootstrap debootstrap" \
    "fuse-overlayfs fuse-overlayfs"; do
    read -r cmd pkg <<<"$entry"
    command -v "$cmd" >/dev/null || missing+=("$pkg")
  done
  apt_install "${missing[@]}"
  if [[ ! -e $CONTAINERS_CONF ]]; then
    [[ $EUID -eq 0 ]] || { say "note: no $CONTAINERS_CONF (root writes one)"; return 0; }
    say "== writing $CONTAINERS_CONF (runc, ulimits)"
    mkdir -p "$(dirname "$CONTAINERS_CONF")"
    cat >"$CONTAINERS_CONF" <<'EOF2'
# Written by mtcp-appliance's scripts/lib.sh (setup_containers) because none was here.
# crun fails on hybrid cgroup hierarchies, so runc; podman run needs explicit ulimits there.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF2
  elif ! grep -qE '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"runc"' "$CONTAINERS_CONF"; then
    say "note: $CONTAINERS_CONF exists and is left as it is; if podman run fails, add"
    say '  [engine] runtime = "runc" and [containers] default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]'
  fi
}

# project_stamp MODE EXTRAS: a hash of what an install of the project depends on: the
# packaging files and the C sources (contents), the build flags, the interpreter, and the
# names of the files that an editable install links (a new or removed file needs a
# reinstall, an edited one does not); for a copy install the contents of every file.
# Shell tools only (no interpreter start): scripts/run pays for this on every start.
project_stamp() {
  local mode=$1 extras=$2 venv=$3
  (
    cd "$ROOT" || exit 1
    {
      printf '%s\n' "mode=$mode" "extras=$extras" "sanitize=${MTCP_SANITIZE:-}" \
        "debug=${MTCP_DEBUG:-}" "cc=${CC:-}" "cflags=${CFLAGS:-}"
      cat "$venv/pyvenv.cfg" 2>/dev/null  # the interpreter (its version, its path)
      sha256sum pyproject.toml setup.py MANIFEST.in mtcp_core/_build.py
      find mtcp_core/src mtcp_core/include -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
      find appliance http metrics mtcp_core static -type f ! -path '*/__pycache__/*' \
        ! -name '*.pyc' ! -name '*.so' -print | LC_ALL=C sort >"${TMPDIR:-/tmp}/.mtcp-files.$$"
      if [[ $mode == copy ]]; then
        tr '\n' '\0' <"${TMPDIR:-/tmp}/.mtcp-files.$$" | xargs -0 sha256sum
      else
        cat "${TMPDIR:-/tmp}/.mtcp-files.$$"
      fi
      rm -f "${TMPDIR:-/tmp}/.mtcp-files.$$"
    } | sha256sum | cut -d' ' -f1
  )
}

setup_venv() {
  local venv=$ROOT/$1
  if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    rm -rf "$venv"
    if ! "$PYTHON" -m venv "$venv" 2>/dev/null; then
      rm -rf "$venv"
      apt_install python3-venv  # Debian's python3 has venv without ensurepip
      "$PYTHON" -m venv "$venv"
    fi
  fi
  local mode=${2:-editable} editable=() extras=${SETUP_EXTRAS-test} stamp_file stamp spec
  stamp_file=$venv/.mtcp-appliance-stamp
  stamp=$(project_stamp "$mode" "$extras" "$venv")
  # a runtime-only setup is also satisfied by an install with the test extras; the built
  # core must still be where the install put it (build/ may have been cleaned)
  if [[ -z ${MTCP_FORCE_SETUP:-} && -f $stamp_file ]] &&
    { grep -qx "$stamp" "$stamp_file" ||
      { [[ -z $extras ]] && grep -qx "$(project_stamp "$mode" test "$venv")" "$stamp_file"; }; } &&
    { compgen -G "$ROOT/build/__editable__.*/mtcp_core/_native*.so" >/dev/null ||
      compgen -G "$venv/lib/python3*/site-packages/mtcp_core/_native*.so" >/dev/null; }; then
    say "== $1 is up to date (nothing the install depends on changed)"
    return 0
  fi
  if [[ $mode == editable ]]; then editable=(--config-settings editable_mode=strict -e); fi
  spec=$ROOT${extras:+[$extras]}
  say "== pip install ($mode) ${spec#"$ROOT"} into $1${MTCP_SANITIZE:+ with MTCP_SANITIZE=$MTCP_SANITIZE}"
  rm -f "$stamp_file"
  "$venv/bin/python" -m pip install -q "${editable[@]}" "$spec"
  printf '%s\n' "$stamp" >"$stamp_file"
}
