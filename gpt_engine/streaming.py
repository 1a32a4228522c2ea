"""Token-by-token text output that never emits part of a UTF-8 character.

Byte-level BPE tokens are byte strings: one emoji or CJK character is often split over two
to four tokens. ``Utf8Stream`` keeps the bytes of an unfinished character until it is
complete, and otherwise emits everything at once.

Invalid bytes are replaced exactly as ``bytes.decode("utf-8", errors="replace")`` does on the
whole stream (one U+FFFD per maximal ill-formed subpart, Unicode 15 §3.9 / W3C practice). That
holds because we only ever hold back a tail that is still a valid *prefix* of a well-formed
sequence (it starts with a lead byte): every byte before it ends where a whole-stream decoder
would also end a character or an ill-formed subpart, since a lead byte is never a continuation.
"""
from __future__ import annotations


def _needed(lead: int) -> tuple[int, int, int]:
    """(total length, lowest, highest allowed 2nd byte) of a sequence starting with ``lead``;
    length 0 when ``lead`` cannot start a multi-byte sequence.

    Table 3-7 of the Unicode standard (well-formed UTF-8): E0 needs A0..BF (no overlongs),
    ED needs 80..9F (no surrogates), F0 needs 90..BF (no overlongs), F4 needs 80..8F (<= U+10FFFF);
    C0, C1 and F5..FF never start a sequence.
    """
    if 0xC2 <= lead <= 0xDF:
        return 2, 0x80, 0xBF
    if 0xE0 <= lead <= 0xEF:
        return 3, (0xA0 if lead == 0xE0 else 0x80), (0x9F if lead == 0xED else 0xBF)
    if 0xF0 <= lead <= 0xF4:
        return 4, (0x90 if lead == 0xF0 else 0x80), (0x8F if lead == 0xF4 else 0xBF)
    return 0, 0, 0


def incomplete_tail(buf: bytes | bytearray) -> int:
    """Length of the trailing bytes of ``buf`` that form an unfinished but so-far valid
    UTF-8 sequence (0..3): these must wait for more bytes."""
    n = len(buf)
    # The lead byte of an unfinished sequence is at most 3 bytes from the end.
    for back in range(1, min(3, n) + 1):
        b = buf[n - back]
        if 0x80 <= b <= 0xBF:  # continuation byte: keep looking for its lead
            continue
        length, lo, hi = _needed(b)
        if back >= length:  # ASCII, an invalid lead, or a sequence that already has all its bytes
            return 0
        if back >= 2 and not lo <= buf[n - back + 1] <= hi:
            return 0
        return back  # later continuation bytes are 80..BF by construction of the loop
    return 0


class Utf8Stream:
    """``push(token_id)`` returns the newly completed text (possibly ""), ``flush()`` the rest.

    The concatenation of all pushes and the flush equals
    ``b"".join(token bytes).decode("utf-8", "replace")``.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._pending = bytearray()

    def push(self, token_id) -> str:
        self._pending += self.tokenizer.token_bytes(token_id)
        keep = incomplete_tail(self._pending)
        cut = len(self._pending) - keep
        if cut == 0:
            return ""
        text = bytes(self._pending[:cut]).decode("utf-8", errors="replace")
        del self._pending[:cut]
        return text

    def flush(self) -> str:
        """Whatever is still held (an unfinished sequence becomes U+FFFD); the stream is reset."""
        text = bytes(self._pending).decode("utf-8", errors="replace")
        self._pending.clear()
        return text

    @property
    def pending(self) -> bytes:
        """Bytes held back, waiting for the rest of their character."""
        return bytes(self._pending)
