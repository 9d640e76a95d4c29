"""Shared storage: both instances contend for one kazoo lock; the holder is active.

Taking the lock bumps `<cluster>/epoch`, the fence every database transaction checks. The holder
stands by the moment the connection is suspended, before its session can expire and the lock pass
on: the server expires a session only after `session_timeout`, while kazoo declares the connection
suspended after two thirds of it without an answer.
"""

import logging
import threading
from typing import Any

from kazoo.exceptions import CancelledError, KazooException, LockTimeout, NoAuthError, NoNodeError
from kazoo.recipe.lock import Lock
from kazoo.recipe.watchers import ChildrenWatch

from reporting.ha.epoch import bump_epoch
from reporting.ha.pair import PairElection
from reporting.ha.roles import Acquired, Confirmed, HolderSeen, Policy, Released

log = logging.getLogger(__name__)

# How long one acquire attempt waits in line. A timed-out attempt leaves the line (kazoo deletes
# the contender node) and joins again at once; the bound keeps kazoo's retry backoff short.
ACQUIRE_WAIT_S = 2.0


def _sequence(node: str) -> str:
    return node[-10:]


class SharedElection(PairElection):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(policy=Policy.SHARED, **kwargs)
        self.lock_path = f"{self.cluster}/lock"
        self.epoch_path = f"{self.cluster}/epoch"
        self.contest.relies_on(self.lock_path, self.epoch_path)
        self._lock: Lock | None = None
        # The session the lock object belongs to: its node dies with that session.
        self._lock_session = -1
        # The lock object holds our node, though the roles may not yet say active.
        self._holding = False
        self._epoch_pending = False
        self._release_requested = threading.Event()
        self._watching = False

    def _waiting_for(self) -> str:
        return f"contending for {self.lock_path}"

    def _round(self) -> None:
        if not self.client.connected:
            self._wait()
            return
        session = self._session()
        if self._lock is not None and self._lock_session != session and not self._drop_lock():
            return
        if self._lock is None:
            # A fresh lock object for each session: its node lives and dies with one session.
            self._lock = Lock(self.client, self.lock_path, identifier=self.name)
            self._lock_session = session
            self._holding = False
            self._epoch_pending = False
        self._watch_holder()
        if self._holding:
            self._hold(session)
        else:
            self._try_acquire(session)

    def _try_acquire(self, session: int) -> None:
        assert self._lock is not None
        self._release_requested.clear()
        try:
            got = self._lock.acquire(timeout=ACQUIRE_WAIT_S)
        except (LockTimeout, CancelledError):
            return
        except (NoAuthError, NoNodeError):
            # Not an interruption: the contest refuses to go on, or creates the nodes again.
            raise
        except KazooException as exc:
            log.debug("%s: acquire interrupted: %r", self.name, exc)
            return
        if not got:
            return
        self._holding = True
        self._epoch_pending = True
        self._take_epoch(session)

    def _take_epoch(self, session: int) -> None:
        if self._session() != session:
            return  # the lock went with that session; the next round starts over
        try:
            epoch = bump_epoch(self.client, self.epoch_path, self.fence_seen)
        except NoAuthError:
            raise
        except KazooException as exc:
            # Still holding the lock: try the bump again next round.
            log.debug("%s: epoch bump failed: %r", self.name, exc)
            self._wait()
            return
        self._epoch_pending = False
        self._apply(Acquired(epoch, "acquired the lock", session))

    def _hold(self, session: int) -> None:
        assert self._lock is not None
        # Not on stop(): there the session is closed only once the server has stood by.
        if self._release_requested.is_set():
            self._release()
            return
        if self._epoch_pending:
            self._take_epoch(session)
            return
        if self.contest.unconfirmed(self.slot):
            # Back from a suspension within the session: the node should still be there and
            # first, but look before consuming again.
            if not self._still_first():
                self._apply(Released("the lock is no longer ours"))
                self._drop_lock()
            elif self._apply(Confirmed(session)) is None:
                self._wait()  # the listener has not yet seen the reconnect
            return
        self._wait()

    def _still_first(self) -> bool:
        assert self._lock is not None
        node = self._lock.node
        try:
            children = self.client.get_children(self.lock_path)
        except NoNodeError:
            return False
        contenders = sorted((c for c in children if "__lock__" in c), key=_sequence)
        return node is not None and bool(contenders) and contenders[0] == node

    def _release(self) -> None:
        if self._drop_lock():
            self._release_requested.clear()
            self._apply(Released("released the lock"))

    def _drop_lock(self) -> bool:
        """Give the lock object up, deleting its node if it has one; False if that failed."""
        assert self._lock is not None
        # An acquire still running when the session was lost may have joined the line again in
        # the new session: that node must go too, or it would block everyone, us included.
        if self._lock.is_acquired:
            try:
                self._lock.release()
            except NoAuthError:
                raise
            except KazooException as exc:
                # The node stays ours until deleted: keep the lock object and try again.
                log.debug("%s: release failed: %r", self.name, exc)
                self._wait()
                return False
        self._lock = None
        self._holding = False
        self._epoch_pending = False
        return True

    def _watch_holder(self) -> None:
        if self._watching:
            return
        # kazoo re-registers the watch after reconnects and calls back on its own thread.
        ChildrenWatch(self.client, self.lock_path, self._on_contenders)
        self._watching = True

    def _on_contenders(self, children: list[str]) -> bool:
        if self.contest.stopping:
            return False
        contenders = sorted((c for c in children if "__lock__" in c), key=_sequence)
        if not contenders:
            self._apply(HolderSeen(None))
            return True
        first = f"{self.lock_path}/{contenders[0]}"
        # Asynchronous: this runs on kazoo's callback thread, which must not wait on ZooKeeper.
        self.client.get_async(first).rawlink(self._on_holder_data)
        return True

    def _on_holder_data(self, result) -> None:
        try:
            data, _ = result.get_nowait()
        except Exception:  # gone meanwhile or connection lost: the next watch event tells
            return
        self._apply(HolderSeen(data.decode() or None))

    def _interrupt(self) -> None:
        if self._lock is not None:
            self._lock.cancel()

    def _nodes_gone(self) -> None:
        # The lock object took its path for made and its watch ended with the path: a fresh
        # one, and a fresh watch, once the nodes are made again. Our node went with the path.
        if self._holding:
            self._apply(Released("the lock node is gone"))
        self._lock = None
        self._holding = False
        self._epoch_pending = False
        self._watching = False

    def _fenced(self) -> None:
        # Taken up by a holding contest thread only; one waiting in line clears it, being no
        # holder the fence was about.
        self._release_requested.set()
