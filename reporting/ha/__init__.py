"""High availability: who of the pair is active, and the epoch that fences the other.

`roles` is the pure state machine. `contest` runs it from ZooKeeper for every election: one
session, one round thread, a slot per role decided; `shared`, `segregated` (over `pair`) and
`group` are the recipes, `acl` checks that the nodes they rely on are the pair's own.
"""

from reporting.ha.election import Election, make_election
from reporting.ha.roles import Role, RoleChange

__all__ = ["Election", "Role", "RoleChange", "make_election"]
