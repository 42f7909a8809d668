#!/bin/sh
# Build and run the io/ tests: plain -O2, then ASan+UBSan (and TSan for the
# pair test, which has a concurrency case). The afpacket and tap tests need
# root; without it they print "skipped" and pass.
# Usage (from anywhere): sh tests/c/run_io_tests.sh [outdir]
set -eu
cd "$(dirname "$0")/../.."
out=${1:-/tmp/mtcp-io-tests}
mkdir -p "$out"
CFLAGS="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Imtcp_core/src"
SAN="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
fail=0
# A sanitizer abort skips the tests' own atexit cleanup: remove what they
# create (only iot-* names) whatever happens.
cleanup() {
    for ns in iot-a iot-b iot-t; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
for t in pair afpacket tap; do
    gcc $CFLAGS -O2 -o "$out/test_io_$t" "tests/c/test_io_$t.c" mtcp_core/src/io/*.c -lpthread
    gcc $CFLAGS $SAN -o "$out/test_io_${t}_asan" "tests/c/test_io_$t.c" mtcp_core/src/io/*.c -lpthread
done
gcc $CFLAGS -O1 -g -fsanitize=thread -o "$out/test_io_pair_tsan" tests/c/test_io_pair.c \
    mtcp_core/src/io/*.c -lpthread
for b in test_io_pair test_io_pair_asan test_io_pair_tsan test_io_afpacket test_io_afpacket_asan \
         test_io_tap test_io_tap_asan; do
    echo "== $b"
    if ! timeout 300 "$out/$b"; then
        echo "!! $b failed"
        fail=1
    fi
done
exit $fail
