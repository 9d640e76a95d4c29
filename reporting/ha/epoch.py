"""The epoch: a counter in a ZooKeeper node, bumped by whoever takes the role (the fence)."""

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError


def read_epoch(client: KazooClient, path: str) -> int:
    """The epoch stored at `path`, 0 when nobody has taken the role yet."""
    try:
        data, _ = client.get(path)
    except NoNodeError:
        return 0
    return int(data.decode() or 0)


def bump_epoch(client: KazooClient, path: str) -> int:
    """Increment the epoch at `path` and return the new value.

    Compare-and-set on the node version: two bumps racing (a stale holder and a new one) can never
    both return the same number, so a database fence on the epoch orders them.
    """
    while True:
        try:
            data, stat = client.get(path)
        except NoNodeError:
            try:
                client.create(path, b"1", makepath=True)
            except NodeExistsError:
                continue  # someone else created it first: bump theirs
            return 1
        epoch = int(data.decode() or 0) + 1
        try:
            client.set(path, str(epoch).encode(), version=stat.version)
        except BadVersionError:
            continue
        return epoch
