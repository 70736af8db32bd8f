"""Only declares pgwarden's optional compiled accelerator; all metadata is in pyproject.toml.

``pgwarden/session/_speedups.pyx`` (compiled twins of the relay's two hottest
loops) is built when Cython and a C compiler are available. It is optional:
when the build fails (no compiler, no Python headers) or Cython is missing,
the install still succeeds and pgwarden uses the pure-Python loops.
PGWARDEN_PURE_PYTHON=1 forces them at run time even when it was built.
"""

import hashlib
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext


class optional_build_ext(build_ext):
    """build_ext that never fails the install: the extension is an accelerator only."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # e.g. no compiler at all (distutils raises before per-extension handling)
            print(f"pgwarden: compiled accelerator not built ({exc}); using the pure-Python relay loops", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"pgwarden: compiled accelerator {ext.name} not built ({exc}); using the pure-Python relay loops", file=sys.stderr)


ROOT = Path(__file__).resolve().parent


def extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:  # Cython is a build requirement, but a plain `setup.py develop` may lack it
        return []
    from setuptools import Extension

    # The module refuses to load if these files changed after it was built (see _speedups.pyx).
    mirrored = ["pgwarden/session/fastpath.py", "pgwarden/session/replies.py"]
    digest = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in mirrored)).hexdigest()
    ext = Extension(
        "pgwarden.session._speedups",
        ["pgwarden/session/_speedups.pyx"],
        depends=mirrored,  # rebuild when they change
        define_macros=[("PGWARDEN_MIRRORED_DIGEST", f'"{digest}"')],
        optional=True,
        extra_compile_args=["-O2"],
    )
    try:
        return cythonize([ext], compiler_directives={"language_level": "3"}, quiet=True)
    except Exception as exc:  # a Cython error must not break the install either
        print(f"pgwarden: cannot cythonize the accelerator ({exc}); using the pure-Python relay loops", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": optional_build_ext})
