"""Base64 text into bytes, validated, as grpc-gateway's protojson reads a `bytes` field.

Standard (``+/``) or URL-safe (``-_``) alphabet, padded or not: a text with ``-`` or ``_`` is
URL-safe and may not also hold ``+`` or ``/``; a text whose length is a multiple of four may
end in its padding, any other carries none. Everything else is refused: a character outside
the alphabet (whitespace included), padding in the middle, too much or too little of it, a
length that no encoding produces. Python's own lenient decoders (``urlsafe_b64decode``, which
`json_format` uses) drop what they do not understand and decode the rest: a request's bytes
would silently differ from what the client sent.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode"]

_URL_SAFE = str.maketrans("-_", "+/")


def decode(text: str) -> bytes:
    """The bytes `text` encodes; ValueError (saying why) when it is not valid base64."""
    if "-" in text or "_" in text:
        if "+" in text or "/" in text:
            raise ValueError("mixes the standard and the URL-safe base64 alphabets")
        text = text.translate(_URL_SAFE)
    if len(text) % 4:
        if "=" in text:
            raise ValueError("has padding but a length that is not a multiple of 4")
        if len(text) % 4 == 1:
            raise ValueError("has a length no base64 encoding has")
        text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
