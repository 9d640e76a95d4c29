"""The epoch: a counter in a ZooKeeper node, bumped by whoever takes the role (the fence)."""

import logging

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

log = logging.getLogger(__name__)

# The database keeps the fence's epoch in a BIGINT: the next epoch must fit it.
MAX_EPOCH = 2**63 - 2


def _parsed(path: str, data: bytes) -> int:
    """The epoch a node holds; one that holds no whole number of 0 or more (edited by hand, or
    damaged) counts as 0, said once per bump: the database fence refuses every epoch below the
    newest that wrote, so a counter started again from there is never let write out of turn."""
    try:
        epoch = int(data.decode("ascii").strip() or 0)
    except (UnicodeDecodeError, ValueError):
        epoch = -1
    if not 0 <= epoch < MAX_EPOCH:
        log.warning(
            "epoch node %s holds %r, not a whole number from 0 to %d; counting from 0",
            path,
            data[:40],
            MAX_EPOCH - 1,
        )
        return 0
    return epoch


def bump_epoch(client: KazooClient, path: str, above: int = 0) -> int:
    """Increment the epoch at `path`, to more than `above` if it is lower, and return the new value.

    Compare-and-set on the node version: two bumps racing (a stale holder and a new one) can never
    both return the same number, so a database fence on the epoch orders them. `above` is the
    fence that refused this instance's last epoch: a counter that fell behind the fence (its
    ZooKeeper lost its data) goes past it in one step, not one refusal per epoch.
    """
    while True:
        try:
            data, stat = client.get(path)
        except NoNodeError:
            try:
                client.create(path, str(above + 1).encode(), makepath=True)
            except NodeExistsError:
                continue  # someone else created it first: bump theirs
            return above + 1
        epoch = max(_parsed(path, data), above) + 1
        try:
            client.set(path, str(epoch).encode(), version=stat.version)
        except BadVersionError:
            continue
        return epoch
