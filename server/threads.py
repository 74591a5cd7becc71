"""The threads that run the model: one for everything, and the one-time compile apart.

PyTorch on a CPU runs its operations on OpenMP thread teams, a team for each thread that
calls into it. GNU OpenMP (libgomp, PyTorch's on Linux) keeps a team's idle threads
spinning between parallel regions only while the process's OpenMP threads do not
outnumber the cores; past that it spins them 1,000 times and then sleeps them (its
GOMP_SPINCOUNT documentation), and each of the thousands of small operations of a request
waits for its team to wake up. A model loaded on one thread and served on another makes
two teams: on 2 cores a completion list took 53 instead of 45 ms, interleaved runs of the
same requests. So the server loads, warms up and serves the model on one thread, and the
compile (model/decode_step.py), which must not hold requests up for seconds, runs on a
thread of its own that ends with it, and its team with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def new_model_thread() -> ThreadPoolExecutor:
    """The executor of all the model's work: loading, warm-up, every request."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="codecomplete-model")


async def on_own_thread(fn: Callable[[], T], name: str) -> T:
    """`fn()` on a new thread that exits when it returns (its OpenMP team goes with it)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as once:
        return await asyncio.wrap_future(once.submit(fn))
