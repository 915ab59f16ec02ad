"""What a gateway's channel may carry that is not a message (the kernel's code writes it).

Found by review: a frame of JSON nested deeper than the decoder goes raised
``RecursionError`` out of the channel's reader, which then died without a word; the turn
waited for its full timeout and the kernel was restarted. Such a frame is now dropped
like any other that is not a message.
"""

from __future__ import annotations

import struct

from datasources.sandbox.gateway import _decode


def test_frames_that_are_not_messages_are_dropped() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert _decode(deep) is None
    assert _decode(struct.pack("!II", 1, 8) + deep.encode()) is None
    assert _decode(struct.pack("!I", 2**32 - 1) + b"x" * 64) is None
    assert _decode(b"\x00\x00\x00\x00") is None
    assert _decode("[1, 2]") is None and _decode("not json") is None
    assert _decode('{"msg_type": "status"}') == {"msg_type": "status"}
