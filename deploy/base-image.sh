#!/usr/bin/env bash
# Makes the base image that the Dockerfile names (debian:bookworm-slim) without an image
# registry: debootstrap --variant=minbase bookworm, trimmed like Debian's slim images, and
# `podman import`ed under that name. The root filesystem's tarball is cached (default
# /var/cache/mtcp-appliance/; MTCP_BASE_CACHE to change), so a rerun only imports it.
#   deploy/base-image.sh [TAG]        (default: the first FROM of the Dockerfile)
# Needs root, debootstrap and podman; reaches Debian's package mirror (MTCP_DEBIAN_MIRROR).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=${1:-$(awk 'toupper($1) == "FROM" { print $2; exit }' "$ROOT/Dockerfile")}
[[ $TAG == *:* ]] || TAG=$TAG:latest
SUITE=bookworm
MIRROR=${MTCP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${MTCP_BASE_CACHE:-/var/cache/mtcp-appliance}
TARBALL=$CACHE/debian-$SUITE-minbase.tar

if podman image exists "$TAG"; then
  echo "base image $TAG: present"
  exit 0
fi
if [[ ! -s $TARBALL ]]; then
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/debootstrap.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "== debootstrap --variant=minbase $SUITE ($MIRROR)"
  debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$MIRROR" >"$work/log" 2>&1 \
    || { tail -n 20 "$work/log" >&2; exit 1; }
  # what Debian's slim images leave out: package caches, lists, docs, man pages, locales
  rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/* \
    "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/info/* \
    "$work/rootfs"/var/log/*.log "$work/rootfs"/var/cache/debconf/*-old
  find "$work/rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias \
    -exec rm -rf {} + 2>/dev/null || true
  # and what they keep out of later installs (Debian's slim images carry the same file)
  cat >"$work/rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF2'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF2
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
    "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" >"$work/rootfs/etc/apt/sources.list"
  tar -C "$work/rootfs" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi
echo "== podman import $TARBALL as $TAG"
podman import --change 'CMD ["bash"]' "$TARBALL" "$TAG" >/dev/null
