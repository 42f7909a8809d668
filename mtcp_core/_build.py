"""cffi build script for mtcp_core._native (API mode, out of line), pynacl style.

setup.py hands this file to cffi (``cffi_modules``) and also reads it for the list of the
project's C sources, which it compiles with the strict flags (see setup.py). Nothing here
is imported at run time.

- The C declarations Python sees are the cdef-clean headers in mtcp_core/include/:
  mtcp_public.h, mtcp_wire_cdef.h and mtcp_frag_cdef.h. They are the only copy: the C
  side includes them too (mtcp.h, wire/wire.h, net/frag.h add the guards and includes).
  The opt.h tunables Python reads are handed over as ``#define NAME ...``, so cffi takes
  the value the C was compiled with (a ``-DNAME=value`` override included).
- Every mtcp_core/src/**/*.c is compiled with ``-std=c11 -Wall -Wextra -Werror``; cffi's
  generated module is compiled with the same flags minus the strict ones.
- Environment: MTCP_SANITIZE=1 adds ASan+UBSan (compile and link), MTCP_DEBUG=1 gives
  -O0 -g instead of -O2. Both also turn assert() back on (Python's CFLAGS carry -DNDEBUG).
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

MODULE = "mtcp_core._native"
PKG = Path(__file__).resolve().parent
INCLUDE = PKG / "include"
SRC = PKG / "src"
CDEF_HEADERS = ("mtcp_public.h", "mtcp_wire_cdef.h", "mtcp_frag_cdef.h")
CDEF_TUNABLES = ("MTCP_FRAG_SLOTS", "MTCP_FRAG_TIMEOUT_MS")
C_PRELUDE = '#include "mtcp.h"\n#include "wire/wire.h"\n#include "net/frag.h"\n'

# Only for the project's own C: cffi's generated code is not written for -Werror.
STRICT_CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror"]


def _rel(path: Path) -> str:
    """Paths relative to the build's working directory (the project root), so that
    object files land in build_temp/mtcp_core/src/<dir>/<name>.o (names repeat across
    directories: wire/tcp.c, tcp/tcp.c)."""
    return os.path.relpath(path)


def _env_on(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def cdef_source() -> str:
    """The public headers cffi parses, concatenated, and the tunables from opt.h."""
    parts = [(INCLUDE / name).read_text() for name in CDEF_HEADERS]
    parts += [f"#define {name} ..." for name in CDEF_TUNABLES]
    return "\n".join(parts)


def project_sources() -> list[str]:
    return [_rel(p) for p in sorted(SRC.rglob("*.c"))]


def _depends() -> list[str]:
    files = [*SRC.rglob("*.c"), *SRC.rglob("*.h"), *INCLUDE.glob("*.h"), Path(__file__)]
    return [_rel(p) for p in sorted(files)]


def flags() -> tuple[list[str], list[str]]:
    """(compile args, link args) shared by the project's C and the generated module."""
    compile_args = ["-pthread"]
    link_args = ["-pthread"]
    compile_args += ["-O0", "-g"] if _env_on("MTCP_DEBUG") else ["-O2"]
    if _env_on("MTCP_SANITIZE"):
        sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        compile_args += sanitize
        link_args += sanitize
    if _env_on("MTCP_DEBUG") or _env_on("MTCP_SANITIZE"):
        compile_args.append("-UNDEBUG")
    return compile_args, link_args


_compile_args, _link_args = flags()

ffibuilder = FFI()
ffibuilder.cdef(cdef_source())
ffibuilder.set_source(
    MODULE,
    C_PRELUDE,
    include_dirs=[_rel(INCLUDE), _rel(SRC)],
    define_macros=[("_GNU_SOURCE", None)],
    extra_compile_args=_compile_args,
    extra_link_args=_link_args,
    depends=_depends(),
)
