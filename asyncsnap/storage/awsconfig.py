"""S3 settings as the AWS CLI resolves them: the endpoint, the region and where the
credentials come from, out of the environment and the shared config and credentials files
(``~/.aws/config``, ``~/.aws/credentials``, or ``AWS_CONFIG_FILE`` and
``AWS_SHARED_CREDENTIALS_FILE``), for the profile ``AWS_PROFILE`` names.

obstore (Rust's object_store) reads ``AWS_*`` environment variables but not those files, so
a profile's ``endpoint_url`` went unread and a cron run meant for a private S3 server sent
its requests to AWS. The files are read by botocore, the AWS CLI's own library (boto3,
already needed for ``AWS_PROFILE``'s credentials), not by a parser of ours: profile and
``[services NAME]`` sections, nested ``s3 =`` settings, ``AWS_CONFIG_FILE`` and
``AWS_DEFAULT_PROFILE`` work as they do for the AWS CLI. The endpoint's order is that of the
AWS SDKs' "Service-specific endpoints" settings page:

1. ``--endpoint-url`` (``endpoint`` here),
2. ``AWS_ENDPOINT_URL_S3``,
3. ``AWS_ENDPOINT_URL``,
4. ``endpoint_url`` under ``s3`` in the ``[services NAME]`` section the profile's
   ``services = NAME`` names,
5. the profile's own ``endpoint_url``,
6. else AWS's endpoint for the region.

``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`` (or the profile's
``ignore_configured_endpoint_urls = true``) skips 2-5, never 1. The region: ``AWS_REGION``,
``AWS_DEFAULT_REGION``, the profile's ``region``. A setting that would send requests
somewhere asyncsnap cannot go (FIPS, dual-stack or accelerated endpoints, a value that is
not a URL or a boolean, a profile that does not exist) is refused with a ``UsageError``
(exit 2) before any request is made, never ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageError

# The variables obstore reads for the endpoint itself, from the process environment, when
# a store is built: AWS_ENDPOINT_URL_S3 even over an endpoint passed to it explicitly.
OBSTORE_SERVICE_ENDPOINT = "AWS_ENDPOINT_URL_S3"
OBSTORE_ENDPOINTS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT")
# An endpoint given on the command line (``use_endpoint_option``): first in the order.
_command_line_endpoint: str | None = None


@dataclass(frozen=True)
class S3Settings:
    """Where S3 requests go and with what, as resolved for one store."""

    endpoint: str | None  # None: AWS's own endpoint for the region
    endpoint_from: str  # where the endpoint came from, for messages ("AWS" if none)
    region: str | None  # None: obstore's default (us-east-1)
    profile: str | None  # the profile whose files were read (None: "default")
    # Static keys from the environment, or None: the profile's credential chain
    keys: dict[str, str] | None
    session: Any = None  # the botocore session that read the files; None: there were none
    # The variables resolved from: a profile's credential chain made later reads them.
    environ: Mapping[str, str] | None = None


def use_endpoint_option(url: str) -> None:
    """``--endpoint-url URL``: first in the endpoint's order for every store of this
    process. Also put in ``AWS_ENDPOINT_URL_S3``, which obstore would otherwise prefer to
    any endpoint it is given (the CLI calls this before any thread starts)."""
    global _command_line_endpoint
    checked_endpoint(url, "--endpoint-url")
    _command_line_endpoint = url
    os.environ[OBSTORE_SERVICE_ENDPOINT] = url


def checked_endpoint(url: str, source: str) -> str:
    """``url`` if it is an ``http://`` or ``https://`` URL with a host and nothing that
    must not be printed (credentials, a query); else a ``UsageError`` naming ``source``
    (never the value, which may hold a secret)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"the S3 endpoint in {source} is not an http:// or https:// URL",
            hint="e.g. http://127.0.0.1:9000 or https://s3.example.com",
        )
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise UsageError(
            f"the S3 endpoint in {source} has credentials, a query or a fragment in it",
            hint="give scheme://host[:port][/path] only; credentials go in AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY or a profile",
        )
    return url


def shown(url: str) -> str:
    """An endpoint for a message: scheme, host and port only."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def resolve(environ: Mapping[str, str], *, endpoint: str | None = None) -> S3Settings:
    """The S3 settings for ``environ`` (the process environment, or a test's), as the AWS
    CLI would use them. ``endpoint``: given explicitly (``--endpoint-url``); else the one
    ``use_endpoint_option`` set, if any.

    :raises UsageError: a setting that cannot be honoured (see the module's docstring).
    """
    session = None if _nothing_to_read(environ) else _session(environ)
    profile: str | None = None
    scoped: dict[str, Any] = {}
    full: dict[str, Any] = {}
    if session is not None:
        profile = session.get_config_variable("profile")
        try:
            scoped = session.get_scoped_config()
            full = session.full_config
        except Exception as exc:  # botocore's ProfileNotFound, ConfigParseError
            raise _config_error(environ, profile, exc) from exc
    where = f"profile {profile}" if profile else "the default profile"

    def value(name: str) -> str | None:
        return environ.get(name) or None

    ignore_variable = "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"
    ignore = _flag(value(ignore_variable), ignore_variable)
    if ignore is None:
        ignore = _flag(
            scoped.get("ignore_configured_endpoint_urls"),
            f"ignore_configured_endpoint_urls of {where}",
        )
    nested = scoped.get("s3")  # "s3 =" and its indented settings
    s3_section: dict[str, Any] = nested if isinstance(nested, dict) else {}
    for name, setting in (
        ("AWS_USE_FIPS_ENDPOINT", value("AWS_USE_FIPS_ENDPOINT")),
        (f"use_fips_endpoint of {where}", scoped.get("use_fips_endpoint")),
        ("AWS_USE_DUALSTACK_ENDPOINT", value("AWS_USE_DUALSTACK_ENDPOINT")),
        (f"use_dualstack_endpoint of {where}", scoped.get("use_dualstack_endpoint")),
        (f"s3 use_dualstack_endpoint of {where}", s3_section.get("use_dualstack_endpoint")),
        (f"s3 use_accelerate_endpoint of {where}", s3_section.get("use_accelerate_endpoint")),
    ):
        if _flag(setting, name):
            raise UsageError(
                f"{name} asks for an AWS endpoint variant asyncsnap cannot use",
                hint="set the endpoint itself (--endpoint-url or AWS_ENDPOINT_URL_S3), "
                "or turn the setting off",
            )

    chosen: tuple[str, str] | None = None
    explicit = endpoint or _command_line_endpoint
    if explicit:
        chosen = (explicit, "--endpoint-url")
    elif not ignore:
        services = _services_section(scoped, full, where)
        for source, found in (
            ("AWS_ENDPOINT_URL_S3", value("AWS_ENDPOINT_URL_S3")),
            ("AWS_ENDPOINT_URL", value("AWS_ENDPOINT_URL")),
            (f"the s3 endpoint_url of [services {scoped.get('services')}]", services),
            (f"endpoint_url of {where}", scoped.get("endpoint_url")),
        ):
            if found:
                chosen = (str(found), source)
                break
    if chosen is not None:
        checked_endpoint(*chosen)

    region = value("AWS_REGION") or value("AWS_DEFAULT_REGION") or scoped.get("region") or None
    keys = _static_keys(environ)
    return S3Settings(
        endpoint=chosen[0] if chosen else None,
        endpoint_from=chosen[1] if chosen else "AWS",
        region=str(region) if region else None,
        profile=profile,
        keys=keys,
        session=session,
        environ=environ,
    )


def _nothing_to_read(environ: Mapping[str, str]) -> bool:
    """No profile is named and neither shared file exists: botocore would find nothing
    to read, so it is not imported. It costs 14 MiB of peak RSS and 0.1 s (measured, an
    S3 dump of pgbench scale 50: 73 against 59 MiB), which the 64 MiB target of issue 24
    could not spare; a cron job with its keys in the environment pays nothing for it."""
    for variable in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        # botocore reads the process's variables too, whatever mapping it is given
        if environ.get(variable) or os.environ.get(variable):
            return False
    for variable, default in (
        ("AWS_CONFIG_FILE", "~/.aws/config"),
        ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
    ):
        if os.path.lexists(os.path.expanduser(environ.get(variable) or default)):
            return False
    return True


def _session(environ: Mapping[str, str]) -> Any:
    """A botocore session reading the files and profile ``environ`` names (set as the
    session's own variables, so a test's mapping counts, not only ``os.environ``)."""
    try:
        import botocore.session  # type: ignore[import-untyped]
    except ImportError as exc:
        raise UsageError(
            "s3:// needs botocore to read the AWS settings, which is not installed",
            hint="pip install 'asyncsnap[s3]'",
        ) from exc
    session = botocore.session.Session()
    session.set_config_variable("config_file", environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    session.set_config_variable(
        "credentials_file", environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    )
    profile = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE")
    if profile:
        session.set_config_variable("profile", profile)
    return session


def _services_section(scoped: dict[str, Any], full: dict[str, Any], where: str) -> str | None:
    """The ``endpoint_url`` under ``s3`` of the ``[services NAME]`` section the profile
    names, if it does; a name without its section is refused, as the AWS CLI does."""
    name = scoped.get("services")
    if not name:
        return None
    section = full.get("services", {}).get(name)
    if not isinstance(section, dict):
        raise UsageError(
            f"{where} has services = {name}, but the config file has no [services {name}]",
            hint="add the section, or remove the services line",
        )
    s3 = section.get("s3")
    found = s3.get("endpoint_url") if isinstance(s3, dict) else None
    return str(found) if found else None


def _flag(value: Any, name: str) -> bool | None:
    """A boolean setting: true or false (any case); None when unset. Anything else is
    refused: the AWS CLI would read it as false, silently."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise UsageError(f"{name} is neither true nor false", hint=f"set {name} to true or false")


def _static_keys(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``) from
    the environment: they come before any profile, as for the AWS CLI."""
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if not key and not secret:
        return None
    if not key or not secret:
        given, missing = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")[:: 1 if key else -1]
        raise UsageError(
            f"{given} is set, but {missing} is not",
            hint="set both, or neither (to use a profile)",
        )
    keys = {"access_key_id": key, "secret_access_key": secret}
    if environ.get("AWS_SESSION_TOKEN"):
        keys["session_token"] = environ["AWS_SESSION_TOKEN"]
    return keys


def credential_provider(settings: S3Settings) -> Any:
    """The profile's credentials (shared files, SSO, assumed roles, processes, container
    and instance roles: botocore's chain, as the AWS CLI's) for obstore; a ``UsageError``
    before any S3 request when the chain finds none."""
    try:
        import boto3  # type: ignore[import-untyped]
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError as exc:
        raise UsageError(
            "reading AWS credentials from a profile needs boto3, which is not installed",
            hint="pip install 'asyncsnap[s3]', or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ) from exc
    which = f"AWS_PROFILE={settings.profile}" if settings.profile else "the default profile"
    botocore_session = settings.session or _session(settings.environ or os.environ)
    if settings.region is not None:
        botocore_session.set_config_variable("region", settings.region)  # the chain's too
    try:
        session = boto3.Session(botocore_session=botocore_session)
        if session.get_credentials() is None:
            raise UsageError(
                f"no AWS credentials found (environment, {which}, instance role)",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with "
                "a profile in ~/.aws/credentials or ~/.aws/config",
            )
        return Boto3CredentialProvider(session)
    except UsageError:
        raise
    except Exception as exc:  # botocore's errors: a broken profile, a failed SSO login
        raise UsageError(
            f"cannot use {which}: {type(exc).__name__}",
            hint="check the profile in ~/.aws/config and ~/.aws/credentials",
        ) from exc


def _config_error(environ: Mapping[str, str], profile: str | None, exc: Exception) -> UsageError:
    name = type(exc).__name__
    if name == "ProfileNotFound":
        variable = "AWS_PROFILE" if environ.get("AWS_PROFILE") else "AWS_DEFAULT_PROFILE"
        return UsageError(
            f"cannot use {variable}={profile}: no such profile",
            hint="check the profile's name in ~/.aws/config and ~/.aws/credentials "
            "(or AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)",
        )
    return UsageError(
        f"cannot read the AWS config file: {name}",
        hint="check ~/.aws/config (or AWS_CONFIG_FILE)",
    )
