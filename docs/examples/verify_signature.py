"""How a webhook receiver checks that a message came from hubcull (--notify-secret-file).

hubcull signs the exact bytes of each POST's body with HMAC-SHA256 and sends
``X-Hubcull-Signature: sha256=<hex>``. Recompute it over the raw body (before parsing
the JSON) with the same secret, and compare in constant time.
"""

import hashlib
import hmac


def from_hubcull(body: bytes, signature_header: str, secret: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature_header)
