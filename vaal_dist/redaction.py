"""Credentials never leave the process in what vaal_dist writes, prints or raises: the one place URIs
(and messages quoting them) are redacted."""
from __future__ import annotations

import re

HIDDEN = "***"

_SCHEME = r"\b[a-z][a-z0-9+.-]*://"
# Where a URI in a text ends. Quoted (as repr() and our messages quote them): at the closing quote, so a
# secret may hold any character but that quote (repr escapes it). Bare: at the line's end or where the next URI
# starts, since a secret may hold spaces and quotes too; this can hide more than the credentials (a later
# "@" on the line), never less.
_URI = re.compile(rf"""(?P<quote>['"])(?P<quoted>{_SCHEME}(?:\\.|(?!(?P=quote))[^\\\n])*)(?P=quote)
                       |(?P<bare>{_SCHEME}(?:(?!['"]?{_SCHEME})[^\n])*)""", re.IGNORECASE | re.VERBOSE)
# Userinfo: from the scheme to the last "@" of the URI, not the first "/": an unencoded "/", "?" or "#" in a
# secret (AWS keys hold "/") would otherwise leave its tail readable.
_USERINFO = re.compile(rf"^({_SCHEME}).*@", re.IGNORECASE | re.DOTALL)
# A query parameter whose name says it holds a secret: access_key, secret_key, session_token, token, password,
# pass, pw, auth, X-Amz-Signature, sig (SAS URLs), ... Its value runs to the next parameter or the fragment.
_SECRET_PARAM = re.compile(r"([?&][^=&\s]*?(?:key|secret|token|pass|pwd|pw|auth|signature|credential|sig)"
                           r"[^=&\s]*=)[^&#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***``: ``s3://key:secret@bucket/p``
    becomes ``s3://***@bucket/p``, ``...?secret_key=abc`` becomes ``...?secret_key=***``. Text without
    credentials comes back unchanged."""
    return _URI.sub(_redact_match, text)


def _redact_match(match: re.Match) -> str:
    if match["quoted"] is not None:
        return f"{match['quote']}{_redact_uri(match['quoted'])}{match['quote']}"
    return _redact_uri(match["bare"])


def _redact_uri(uri: str) -> str:
    return _SECRET_PARAM.sub(rf"\g<1>{HIDDEN}", _USERINFO.sub(rf"\g<1>{HIDDEN}@", uri))


def redact_all(obj):
    """``obj`` as JSON types (tuples as lists), every string in it redacted: configs and training facts hold URIs."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_all(v) for v in obj]
    return obj
