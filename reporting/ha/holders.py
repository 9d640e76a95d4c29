"""Who holds the role for a journal right now, as ZooKeeper tells: for tools that must not run
beside a live writer (`replay`)."""

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.recipe.lock import Lock

from reporting.config import Config, LaneSpec, queue_key


def journal_holder(client: KazooClient, config: Config, lane: LaneSpec) -> str | None:
    """The instance that holds (or is contending for, in shared mode: it may get it any moment)
    the role for `lane`'s journal; None when nobody does. Segregated journals are an instance's
    own: the journal's writer lock tells whether that instance runs."""
    cluster = config.ha.cluster.rstrip("/")
    if config.ha.mode == "shared":
        contenders = Lock(client, f"{cluster}/lock").contenders()
        return contenders[0] if contenders else None
    if config.ha.mode == "group":
        try:
            data, _ = client.get(f"{queue_key(cluster, lane.queues[0])}/owner")
        except NoNodeError:
            return None
        return data.decode() or "?"
    return None
