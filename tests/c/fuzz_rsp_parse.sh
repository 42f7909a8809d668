#!/bin/sh
# Fuzzes the static responder's request parser under ASan+UBSan.
# clang present: libFuzzer, `runs` inputs (default 10000000) from a seed corpus;
# otherwise gcc and the harness's own mutating driver.
# Usage (from anywhere): sh tests/c/fuzz_rsp_parse.sh [runs] [outdir]
set -eu
cd "$(dirname "$0")/../.."
runs=${1:-10000000}
out=${2:-/tmp/mtcp-fuzz-rsp}
mkdir -p "$out/corpus"
SRC="tests/c/fuzz_rsp_parse.c mtcp_core/src/api/rsp_parse.c"
INC="-Imtcp_core/src -Imtcp_core/include -D_GNU_SOURCE -std=c11 -g -O1"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
if command -v clang >/dev/null 2>&1; then
    clang $INC $SAN -fsanitize=fuzzer -o "$out/fuzz_rsp_parse" $SRC
    printf 'GET / HTTP/1.1\r\nHost: t\r\n\r\n' > "$out/corpus/get"
    printf 'HEAD /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n' > "$out/corpus/head10"
    printf 'GET /x HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nIf-None-Match: "a"\r\nUser-Agent: u\r\nReferer: r\r\n\r\n' > "$out/corpus/full"
    printf 'GET / HTTP/1.1\r\nHost: t\r\nRange: bytes=0-1\r\n\r\n' > "$out/corpus/range"
    "$out/fuzz_rsp_parse" -runs="$runs" -max_len=4200 -print_final_stats=1 "$out/corpus"
else
    gcc $INC $SAN -DFUZZ_STANDALONE -o "$out/fuzz_rsp_parse" $SRC
    "$out/fuzz_rsp_parse" "$runs"
fi
