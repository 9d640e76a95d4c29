"""What the chaos samplers share: a daemon thread that polls, a pool that asks every instance's
/status at once, and the instances frozen (SIGSTOP), which are not asked: they cannot answer."""

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Self

from reporting.harness.instance import Instance
from reporting.harness.pair import short_name


class Poller:
    def __init__(self, *, workers: int, name: str) -> None:
        self._frozen: set[str] = set()  # short names
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._thread = threading.Thread(target=self._run, name=f"{name}-sampler", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._pool.shutdown(wait=True)

    def freeze(self, instance: Instance) -> None:
        """Call before SIGSTOP: the instance is not asked until thawed."""
        with self._lock:
            self._frozen.add(short_name(instance))

    def thaw(self, instance: Instance) -> None:
        """Call after SIGCONT."""
        with self._lock:
            self._frozen.discard(short_name(instance))

    def _run(self) -> None:
        raise NotImplementedError
