"""The daemon's pool for blocking calls: every thread started up front, so its thread count is fixed from READY."""

from __future__ import annotations

import asyncio
import threading

from bot.daemon import install_io_pool


def test_overlapping_blocking_calls_start_no_thread_after_the_pool_is_installed() -> None:
    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        install_io_pool(loop, workers=3)
        before = threading.active_count()
        install_io_pool(loop, workers=3)  # once per loop: a second call changes nothing
        again = threading.active_count()
        # Three calls that overlap (each waits for the others): asyncio's own pool would have started them lazily.
        meet = threading.Barrier(3)
        await asyncio.gather(*(asyncio.to_thread(meet.wait, 10) for _ in range(3)))
        names = {t.name for t in threading.enumerate() if t.name.startswith("daemon-io")}
        assert len(names) == 3, names
        return before, again, threading.active_count()

    before, again, after = asyncio.run(main())
    assert before == again == after
    assert not any(t.name.startswith("daemon-io") for t in threading.enumerate())  # shut down with the loop
