"""The courier that carries engine events to event loops: order, several loops, closing."""

from __future__ import annotations

import asyncio
import threading

from service.engine.event_courier import EventCourier


def run_loop_in_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread


def drain(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, count: int) -> list:
    async def take() -> list:
        return [await asyncio.wait_for(queue.get(), timeout=10) for _ in range(count)]

    return asyncio.run_coroutine_threadsafe(take(), loop).result(timeout=20)


def test_events_posted_from_another_thread_arrive_in_order_on_their_own_loops():
    courier = EventCourier("test-events")
    loops = [run_loop_in_thread() for _ in range(2)]
    queues = [asyncio.run_coroutine_threadsafe(_new_queue(), loop).result() for loop, _ in loops]

    def worker() -> None:
        for number in range(2000):
            target = number % 2
            courier.post(loops[target][0], queues[target], number)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    try:
        assert drain(loops[0][0], queues[0], 1000) == list(range(0, 2000, 2))
        assert drain(loops[1][0], queues[1], 1000) == list(range(1, 2000, 2))
    finally:
        courier.close()
        for loop, loop_thread in loops:
            loop.call_soon_threadsafe(loop.stop)
            loop_thread.join()
            loop.close()


def test_closing_delivers_what_was_posted_and_a_closed_loop_is_skipped():
    courier = EventCourier("test-events")
    gone = asyncio.new_event_loop()
    gone.close()
    loop, thread = run_loop_in_thread()
    queue = asyncio.run_coroutine_threadsafe(_new_queue(), loop).result()
    try:
        courier.post(gone, asyncio.Queue(), "lost")  # its listener went away: dropped, not fatal
        for number in range(50):
            courier.post(loop, queue, number)
        courier.close()
        assert drain(loop, queue, 50) == list(range(50))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _new_queue() -> asyncio.Queue:
    return asyncio.Queue()
