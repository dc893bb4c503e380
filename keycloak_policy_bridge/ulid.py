"""ULIDs: 128-bit, lexicographically sortable identifiers (48-bit ms timestamp + 80 bits).

Decision ids are ULIDs so that the decision log sorts by time without an index. The caller
supplies both the time and the entropy, which keeps this module free of clock and randomness
reads (the service passes ``os.urandom``; offline evaluation derives entropy from its inputs so
that the same inputs print the same id).
"""

from __future__ import annotations

from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, as the ULID spec requires


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
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[number & 31])
        number >>= 5
    return "".join(reversed(chars))
