"""The native part of asyncsnap (``asyncsnap._rows``); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "asyncsnap._rows",
            sources=["asyncsnap/_rows.c"],
            extra_compile_args=["-O2", "-std=gnu99", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
