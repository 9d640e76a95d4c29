"""Who holds the role for a journal right now, as ZooKeeper tells: for tools that must not run
beside a live writer (`replay`)."""

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.recipe.lock import Lock

from reporting.ha.group import queue_key


def journal_holder(client: KazooClient, *, mode: str, cluster: str, queue: str) -> str | None:
    """The instance that holds (or is contending for, in shared mode: it may get it any moment)
    the role for the journal of `cluster` (group mode: of `queue`); None when nobody does.
    Segregated journals are an instance's own: the journal's writer lock tells whether that
    instance runs."""
    cluster = cluster.rstrip("/")
    if mode == "shared":
        contenders = Lock(client, f"{cluster}/lock").contenders()
        return contenders[0] if contenders else None
    if mode == "group":
        try:
            data, _ = client.get(f"{queue_key(cluster, queue)}/owner")
        except NoNodeError:
            return None
        return data.decode() or "?"
    return None
