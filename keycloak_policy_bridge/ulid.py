"""ULIDs: 128-bit, lexicographically sortable identifiers (48-bit ms timestamp + 80 bits).

Decision ids are ULIDs so that the decision log sorts by time without an index. The caller
supplies both the time and the entropy, which keeps this module free of clock and randomness
reads (the service passes ``os.urandom``; offline evaluation derives entropy from its inputs so
that the same inputs print the same id).
"""

from __future__ import annotations

import base64
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, as the ULID spec requires
# base64's base32 (RFC 4648 alphabet, in C) then one translation to Crockford's: a fifth of the
# cost of 26 shifts in Python, once per decision.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode("ascii"))


def make_ulid(moment: datetime, entropy: bytes) -> str:
    """Return the 26-character ULID for ``moment`` (aware) and 10 bytes of ``entropy``.

    Raises:
        ValueError: if ``entropy`` is shorter than 10 bytes or ``moment`` is before the epoch.
    """
    if len(entropy) < 10:
        raise ValueError("a ULID needs 10 bytes of entropy")
    millis = int(moment.timestamp() * 1000)
    if millis < 0 or millis >= 1 << 48:
        raise ValueError("timestamp out of the ULID range")
    number = (millis << 80) | int.from_bytes(entropy[:10], "big")
    # 26 characters of 5 bits are 130 bits: the 128 of the number after 2 zero bits. Shifted
    # left by 6 it fills 17 bytes whose base32 starts with those 26 characters.
    return base64.b32encode((number << 6).to_bytes(17, "big"))[:26].translate(_TO_CROCKFORD).decode("ascii")
