"""Who may touch the pair's nodes: the ACLs they are made with, and the check that the nodes an
election finds are the pair's own.

With [ha] credentials every node the pair creates is its digest user's alone. That protects
nothing if someone else created the node first, open: ZooKeeper keeps a node's ACL as its creator
set it. So before taking part an election reads the ACL of every node it relies on and refuses to
run unless it is the pair's own.
"""

from collections.abc import Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.security import ACL, ANYONE_ID_UNSAFE, Id, Permissions, make_digest_acl_credential

from reporting.errors import ZooKeeperRefused

# The folders above a cluster path: other pairs, with other credentials, create theirs beside it,
# and an operator may tidy one away; nobody but ZooKeeper's super user may change their ACL, or
# a stranger could close them to every pair.
PARENT_ACL = [ACL(Permissions.READ | Permissions.CREATE | Permissions.DELETE, ANYONE_ID_UNSAFE)]

_PERMS = (
    (Permissions.CREATE, "c"),
    (Permissions.DELETE, "d"),
    (Permissions.READ, "r"),
    (Permissions.WRITE, "w"),
    (Permissions.ADMIN, "a"),
)


def own_id(auth: tuple[str, str]) -> Id:
    """The digest identity the pair's (user, password) authenticates as."""
    return Id("digest", make_digest_acl_credential(*auth))


def describe(acls: Iterable[ACL]) -> str:
    """An ACL as ZooKeeper's CLI writes it (`world:anyone:cdrwa`), a digest's hash left out."""
    entries = []
    for acl in acls:
        ident = acl.id.id
        if acl.id.scheme == "digest":
            ident = ident.split(":", 1)[0] + ":***"
        perms = "".join(letter for bit, letter in _PERMS if acl.perms & bit)
        entries.append(f"{acl.id.scheme}:{ident}:{perms}")
    return ",".join(entries) or "none"


def open_parents(client: KazooClient, cluster: str) -> None:
    """Create the folders above `cluster` open to all but for their ACL (see PARENT_ACL); only the
    cluster path itself is closed."""
    parent = cluster.rsplit("/", 1)[0]
    if parent:
        client.ensure_path(parent, acl=PARENT_ACL)


def check_nodes(
    client: KazooClient, hosts: str, paths: Iterable[str], *, auth: tuple[str, str] | None
) -> None:
    """Raise ZooKeeperRefused for the first existing node of `paths` that this instance cannot
    read, or, with credentials, whose ACL is not the pair's own: all rights to the pair's digest
    user, none to anyone else."""
    for path in paths:
        try:
            acls, _ = client.get_acls(path)
        except NoNodeError:
            continue
        except NoAuthError:
            raise ZooKeeperRefused(hosts, path, no_access(auth)) from None
        if auth is not None and not _own(acls, own_id(auth)):
            reason = (
                f"has ACL {describe(acls)}, not this pair's own (digest:{auth[0]}:***:cdrwa); "
                "delete it as ZooKeeper's super user and the pair makes it again"
            )
            raise ZooKeeperRefused(hosts, path, reason)


def _own(acls: list[ACL], ident: Id) -> bool:
    perms = 0
    for acl in acls:
        if acl.id != ident:
            return False
        perms |= acl.perms
    return perms == Permissions.ALL


def no_access(auth: tuple[str, str] | None) -> str:
    if auth is None:
        return "no access without credentials: set [ha] user and password_env or password_file"
    return f"no access as user {auth[0]!r}: wrong password, or the node is not this pair's"
