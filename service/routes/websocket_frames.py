"""Close frames for WebSocket protocol violations, as RFC 6455 asks and Hypercorn does not send.

wsproto finds a malformed frame (unmasked, a reserved opcode or bit, a fragmented or oversized
control frame, text that is not UTF-8) and reports it as a CloseConnection event carrying the
code RFC 6455 prescribes (1002, or 1007 for invalid UTF-8). Hypercorn 0.18 answers only a close
the peer started and otherwise drops the TCP connection without a word. Nor does anything look
at a frame's announced length until its bytes arrive, so a header announcing 2^63-1 bytes held a
socket open. `install()` replaces Hypercorn's WebSocket event handling with one that sends the
close frame first, and closes with 1009 as soon as a frame header announces more than
`websocket_max_message_size`. It changes the one method, process-wide: Hypercorn offers no
setting for either.
"""

from __future__ import annotations

from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason


async def _handle_events(self: WSStream) -> None:
    for event in self.connection.events():
        if isinstance(event, Message):
            try:
                self.buffer.extend(event)
            except FrameTooLargeError:
                await _fail(self, CloseReason.MESSAGE_TOO_BIG)
                return
            if event.message_finished:
                await self.app_put(self.buffer.to_message())
                self.buffer.clear()
        elif isinstance(event, Ping):
            await self._send_wsproto_event(event.response())
        elif isinstance(event, CloseConnection):
            if self.connection.state == ConnectionState.REMOTE_CLOSING:  # the peer closed: answer it
                await self._send_wsproto_event(event.response())
            elif self.connection.state == ConnectionState.OPEN:  # wsproto found a violation: say which
                await self._send_wsproto_event(CloseConnection(code=event.code))
            await self.send(StreamClosed(stream_id=self.stream_id))
            return
    if _announced_length(self) > self.config.websocket_max_message_size:
        await _fail(self, CloseReason.MESSAGE_TOO_BIG)


def _announced_length(stream: WSStream) -> int:
    """The payload length the frame being received announced, 0 between frames."""
    header = stream.connection._proto._frame_decoder.header  # wsproto keeps it nowhere public
    return 0 if header is None else header.payload_len


async def _fail(stream: WSStream, code: CloseReason) -> None:
    await stream._send_wsproto_event(CloseConnection(code=code))
    await stream.send(StreamClosed(stream_id=stream.stream_id))


def install() -> None:
    WSStream._handle_events = _handle_events
