"""Credentials inside URIs: masked wherever a URI is shown, handed to clients apart from it.

A URI may carry a password (``http://user:pass@host``, ``postgresql://user:pass@db/mlflow``) or a
signed query (``?X-Amz-Signature=...``). A table, a log line, an error, a tag or a Prefect artifact
that names a URI shows ``mask_uri(uri)``; a setting that holds one is a ``SecretURI``, which prints
masked by itself.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# SQLAlchemy's reading of user info: the password runs to the first "@", and may hold "/" or "?".
_SQLALCHEMY_USERINFO = re.compile(r"[^:/]*(?::[^@]*)?@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&;#][^=&;#]*(?:pass|pwd|secret|token|key|sig|credential)[^=&;#]*=)[^&;#]*")


def _userinfo_end(rest: str) -> int:
    """Where the user info of ``rest`` (a URI after ``scheme://``) ends, -1 when it has none: the
    furthest "@" that an HTTP client (the last "@" of the authority) or SQLAlchemy would take."""
    authority = re.match(r"[^/?#]*", rest).group()
    ends = [authority.rfind("@")]
    if match := _SQLALCHEMY_USERINFO.match(rest):
        ends.append(match.end() - 1)
    return max(ends)


def mask_uri(uri: str) -> str:
    """``uri`` with its user info (``user:pass@``, ``token@``) and the values of secret-looking
    query parameters replaced by ``***``; a string that is not a URI is returned unchanged."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return uri
    end = _userinfo_end(rest)
    if end >= 0:
        rest = MASK + rest[end:]
    locator, query = re.match(r"([^?#]*)(.*)", rest, re.DOTALL).groups()
    return f"{scheme}://{locator}{_SECRET_QUERY.sub(lambda m: m.group(1) + MASK, query)}"


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user info, user, password)``, user and password percent-decoded (None when
    absent), parsed as HTTP clients parse a URL."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rpartition("@")[2]
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts._replace(netloc=host).geturl(), user, password


class SecretURI(SecretStr):
    """A URI setting that may hold credentials: ``str``, ``repr`` and tables show it masked
    (``http://***@host:5000``); ``get_secret_value()`` is the URI itself."""

    def _display(self) -> str:
        return mask_uri(self.get_secret_value())
