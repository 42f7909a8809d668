"""Builds mtcp_core._native; everything else is in pyproject.toml.

cffi generates the extension module from mtcp_core/_build.py. Its generated C is compiled
with the ordinary flags, while the project's own C (mtcp_core/src/**/*.c) is compiled here
first, with ``-std=c11 -Wall -Wextra -Werror`` on top, and linked into the same module as
extra objects.
"""

from __future__ import annotations

import json
import os
import runpy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.modified import newer_group

BUILD_SCRIPT = "mtcp_core/_build.py"
BUILD: dict[str, Any] = runpy.run_path(str(Path(__file__).resolve().parent / BUILD_SCRIPT))


class StrictBuildExt(build_ext):
    """build_ext that compiles the project's C strictly, then links it into _native."""

    def build_extension(self, ext: Any) -> None:
        if ext.name != BUILD["MODULE"]:
            super().build_extension(ext)
            return
        # The compile and link flags decide the build as much as the sources do: a sanitizer
        # build must not be taken as up to date for a normal one (build/ is shared).
        stamp = Path(self.build_temp) / "mtcp_native.flags"
        key = json.dumps([ext.extra_compile_args, ext.extra_link_args, BUILD["STRICT_CFLAGS"]])
        stale = not stamp.exists() or stamp.read_text() != key
        deps = [*ext.sources, *ext.depends]
        if not (self.force or stale or newer_group(deps, self.get_ext_fullpath(ext.name))):
            super().build_extension(ext)  # says "skipping ... (up-to-date)"
            return
        force = self.force
        self.force = True
        try:
            objects = self._compile_project(ext)
            ext.extra_objects = [o for o in ext.extra_objects if o not in objects] + objects
            super().build_extension(ext)
        finally:
            self.force = force
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(key)

    def _compile_project(self, ext: Any) -> list[str]:
        sources: list[str] = BUILD["project_sources"]()
        if not sources:
            return []

        def compile_one(source: str) -> list[str]:
            return self.compiler.compile(
                [source],
                output_dir=self.build_temp,
                macros=ext.define_macros,
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs=[*ext.extra_compile_args, *BUILD["STRICT_CFLAGS"]],
                depends=ext.depends,
            )

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            return [obj for objs in pool.map(compile_one, sources) for obj in objs]


setup(
    cffi_modules=[f"{BUILD_SCRIPT}:ffibuilder"],
    cmdclass={"build_ext": StrictBuildExt},
)
