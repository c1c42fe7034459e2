"""Build the Cython fast path.

SFU_SANITIZE=address builds it with AddressSanitizer so the fuzz tests catch
any read past a datagram.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

extra_compile = ["-O2"]
extra_link: list[str] = []
if os.environ.get("SFU_SANITIZE"):
    flag = f"-fsanitize={os.environ['SFU_SANITIZE']}"
    extra_compile = ["-O1", "-g", "-fno-omit-frame-pointer", flag]
    extra_link = [flag]

extensions = [
    Extension(
        "sfu._fastpath",
        ["sfu/_fastpath.pyx"],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
