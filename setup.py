"""The native part of asyncsnap (``asyncsnap._rows``); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "asyncsnap._rows",
            sources=["asyncsnap/_rows.c"],
            # SHA-256 for row fingerprints: OpenSSL's, as Python's hashlib (libssl-dev)
            libraries=["crypto"],
            extra_compile_args=[
                "-O2",
                "-std=gnu99",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                # SHA256_Init/Update/Final: kept in OpenSSL 3, marked deprecated (see _rows.c)
                "-Wno-deprecated-declarations",
            ],
        )
    ]
)
