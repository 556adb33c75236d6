"""Credentials never leave the process in what vaal_dist writes, prints or raises: the one place URIs
(and messages quoting them) are redacted."""
from __future__ import annotations

import re

HIDDEN = "***"

# Userinfo: from the scheme to the last "@" before the path's query, a quote or a space. The last one, not
# the first "/": an unencoded "/" in a secret (common in AWS keys) would otherwise leave its tail readable.
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^\s'\"?#]*@", re.IGNORECASE)
# A query parameter whose name says it holds a secret: access_key, secret_key, session_token, token,
# password, X-Amz-Signature, sig (SAS URLs), ...
_SECRET_PARAM = re.compile(r"([?&][^=&\s'\"#]*(?:key|secret|token|passw|pwd|signature|credential|sig)"
                           r"[^=&\s'\"#]*=)[^&\s'\"#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***``: ``s3://key:secret@bucket/p``
    becomes ``s3://***@bucket/p``, ``...?secret_key=abc`` becomes ``...?secret_key=***``. Text without
    credentials comes back unchanged."""
    return _SECRET_PARAM.sub(rf"\g<1>{HIDDEN}", _USERINFO.sub(rf"\g<1>{HIDDEN}@", text))
