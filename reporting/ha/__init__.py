"""High availability: who of the pair is active, and the epoch that fences the other.

`roles` is the pure state machine; `shared` and `segregated` drive it from ZooKeeper.
"""

from reporting.ha.election import Election, make_election
from reporting.ha.roles import Role, RoleChange

__all__ = ["Election", "Role", "RoleChange", "make_election"]
