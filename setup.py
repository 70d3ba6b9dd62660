"""The native part of asyncsnap (``asyncsnap._rows``); everything else is in pyproject.toml.

``ASYNCSNAP_SANITIZE=1`` builds it with AddressSanitizer and UBSan, every finding fatal,
for the fuzz test (``.ci/run`` builds such a copy apart from the installed one; Python
then needs ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``)."""

import os

from setuptools import Extension, setup

SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
sanitized = os.environ.get("ASYNCSNAP_SANITIZE") == "1"

setup(
    ext_modules=[
        Extension(
            "asyncsnap._rows",
            sources=["asyncsnap/_rows.c"],
            # SHA-256 for row fingerprints: OpenSSL's, as Python's hashlib (libssl-dev),
            # through EVP only: OpenSSL 3's API with every deprecated call left out, so a
            # use of one fails the build (and a libcrypto built without them links).
            libraries=["crypto"],
            define_macros=[("OPENSSL_API_COMPAT", "30000"), ("OPENSSL_NO_DEPRECATED", "1")],
            extra_compile_args=[
                "-O2",
                "-std=gnu99",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Werror=deprecated-declarations",
                # a deprecated function called without its declaration (the header leaves
                # it out) would otherwise only warn, and link: libcrypto still exports it
                "-Werror=implicit-function-declaration",
                *([*SANITIZE, "-fno-sanitize-recover=undefined", "-g"] if sanitized else []),
            ],
            extra_link_args=SANITIZE if sanitized else [],
        )
    ]
)
