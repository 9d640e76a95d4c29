"""The role state machine, event by event: no ZooKeeper, no threads."""

from reporting.ha.roles import (
    Acquired,
    Confirmed,
    Connected,
    EpochTaken,
    Fenced,
    HolderSeen,
    Policy,
    PrimaryBack,
    Released,
    Role,
    RoleChange,
    Roles,
    SessionLost,
    Started,
    StoodDown,
    Stopping,
    Suspended,
    describe,
)


def shared_active(epoch: int = 3) -> Roles:
    roles = Roles("rs-a", policy=Policy.SHARED)
    roles.apply(Connected())
    assert roles.apply(Acquired(epoch, "acquired the lock", 0)) == RoleChange(
        Role.ACTIVE, epoch, "rs-a", "acquired the lock"
    )
    return roles


def backup_active(epoch: int = 2) -> Roles:
    roles = Roles("rs-b", policy=Policy.SEGREGATED)
    roles.apply(Connected())
    change = roles.apply(Acquired(epoch, "primary gone"))
    assert change is not None and change.role is Role.ACTIVE
    return roles


def test_starts_standby_with_epoch_zero() -> None:
    roles = Roles("rs-a", policy=Policy.SHARED)
    assert (roles.role, roles.epoch, roles.holder) == (Role.STANDBY, 0, None)


def test_start_tells_standby_with_what_it_waits_for() -> None:
    roles = Roles("rs-b", policy=Policy.SHARED)
    change = roles.apply(Started("contending for /c/lock"))
    assert change == RoleChange(Role.STANDBY, 0, None, "contending for /c/lock")


def test_shared_suspension_stands_by_at_once_and_keeps_the_epoch() -> None:
    roles = shared_active(epoch=7)
    change = roles.apply(Suspended())
    assert change == RoleChange(Role.STANDBY, 7, None, "zookeeper connection suspended")
    assert roles.role is Role.STANDBY and roles.held


def test_shared_reconnect_needs_confirmation_before_active_again() -> None:
    roles = shared_active(epoch=7)
    roles.apply(Suspended())
    assert roles.apply(Connected()) is None
    assert roles.role is Role.STANDBY
    change = roles.apply(Confirmed(session=0))
    assert change is not None and (change.role, change.epoch) == (Role.ACTIVE, 7)


def test_shared_confirmation_from_an_expired_session_is_ignored() -> None:
    roles = shared_active()
    roles.apply(Suspended())
    assert roles.apply(SessionLost()) is None  # already standby
    roles.apply(Connected())
    assert roles.apply(Confirmed(session=0)) is None
    assert roles.role is Role.STANDBY and not roles.held


def test_shared_session_loss_while_active_stands_by() -> None:
    roles = shared_active()
    change = roles.apply(SessionLost())
    assert change is not None and change.role is Role.STANDBY
    assert change.reason == "zookeeper session lost"


def test_shared_acquisition_reported_from_an_older_session_is_ignored() -> None:
    roles = Roles("rs-a", policy=Policy.SHARED)
    roles.apply(Connected())
    roles.apply(SessionLost())
    roles.apply(Connected())
    assert roles.apply(Acquired(4, "acquired the lock", session=0)) is None
    assert roles.role is Role.STANDBY and roles.epoch == 0


def test_shared_acquisition_while_suspended_waits_for_confirmation() -> None:
    roles = Roles("rs-a", policy=Policy.SHARED)
    roles.apply(Connected())
    roles.apply(Suspended())
    assert roles.apply(Acquired(5, "acquired the lock", session=0)) is None
    assert roles.role is Role.STANDBY and roles.held and roles.epoch == 5
    roles.apply(Connected())
    change = roles.apply(Confirmed(session=0))
    assert change is not None and (change.role, change.epoch) == (Role.ACTIVE, 5)


def test_confirmation_while_already_active_changes_nothing() -> None:
    roles = shared_active()
    assert roles.apply(Confirmed(session=0)) is None


def test_fence_stands_by_and_forgets_the_lock() -> None:
    roles = shared_active(epoch=4)
    assert roles.apply(Fenced()) == RoleChange(Role.STANDBY, 4, None, "fenced")
    assert not roles.held
    assert roles.apply(Fenced()) is None  # once is enough


def test_new_epoch_after_fence() -> None:
    roles = shared_active(epoch=4)
    roles.apply(Fenced())
    change = roles.apply(Acquired(6, "acquired the lock", session=0))
    assert change is not None and (change.role, change.epoch) == (Role.ACTIVE, 6)


def test_released_lock_stands_by() -> None:
    roles = shared_active()
    change = roles.apply(Released("released the lock"))
    assert change is not None and change.role is Role.STANDBY
    assert roles.apply(Released("released the lock")) is None


def test_holder_seen_only_while_standby() -> None:
    roles = Roles("rs-b", policy=Policy.SHARED)
    assert roles.apply(HolderSeen("rs-a")) is None
    assert roles.holder == "rs-a"
    roles.apply(Connected())
    roles.apply(Acquired(2, "acquired the lock", session=0))
    roles.apply(HolderSeen("rs-a"))  # a late look from before we took the lock
    assert roles.holder == "rs-b"


def test_stopping_stands_by_and_ignores_everything_after() -> None:
    roles = shared_active()
    change = roles.apply(Stopping())
    assert change is not None and change.reason == "stopping"
    assert roles.apply(Acquired(9, "acquired the lock", session=0)) is None
    assert roles.apply(SessionLost()) is None
    assert roles.role is Role.STANDBY


def test_segregated_keeps_its_role_through_suspension_and_session_loss() -> None:
    roles = backup_active()
    assert roles.apply(Suspended()) is None
    assert roles.apply(SessionLost()) is None
    assert roles.role is Role.ACTIVE


def test_segregated_activation_is_not_tied_to_the_connection() -> None:
    roles = Roles("rs-a", policy=Policy.SEGREGATED)
    roles.apply(Connected())
    roles.apply(Suspended())
    change = roles.apply(Acquired(1, "healthy, holding /c/primary"))
    assert change is not None and change.role is Role.ACTIVE


def test_backup_drains_before_standing_down() -> None:
    roles = backup_active(epoch=2)
    change = roles.apply(PrimaryBack("rs-a"))
    assert change == RoleChange(Role.STANDBY, 2, "rs-a", "primary is back", drain_first=True)
    # Still consuming its own broker: reported active until the server says it is drained.
    assert roles.role is Role.ACTIVE and roles.draining
    assert roles.apply(PrimaryBack("rs-a")) is None  # told once
    change = roles.apply(StoodDown())
    assert change is not None and (change.role, change.drain_first) == (Role.STANDBY, False)
    assert roles.role is Role.STANDBY and not roles.draining


def test_stood_down_without_drain_changes_nothing() -> None:
    roles = backup_active()
    assert roles.apply(StoodDown()) is None
    assert roles.role is Role.ACTIVE


def test_primary_gone_again_while_draining_resumes_with_the_same_epoch() -> None:
    roles = backup_active(epoch=2)
    roles.apply(PrimaryBack("rs-a"))
    change = roles.apply(Acquired(None, "primary gone again"))
    assert change is not None and (change.role, change.epoch) == (Role.ACTIVE, 2)
    assert not roles.draining
    assert roles.apply(StoodDown()) is None  # a late call for the drain just cancelled


def test_activation_without_epoch_after_standing_down_is_ignored() -> None:
    roles = backup_active()
    roles.apply(PrimaryBack("rs-a"))
    roles.apply(StoodDown())
    assert roles.apply(Acquired(None, "primary gone again")) is None
    assert roles.role is Role.STANDBY


def test_primary_back_while_standby_only_names_the_holder() -> None:
    roles = Roles("rs-b", policy=Policy.SEGREGATED)
    assert roles.apply(PrimaryBack("rs-a")) is None
    assert (roles.role, roles.holder) == (Role.STANDBY, "rs-a")


def test_log_lines() -> None:
    assert (
        describe("rs-a", RoleChange(Role.ACTIVE, 7, "rs-a", "acquired the lock"))
        == "rs-a: role active (epoch 7): acquired the lock"
    )
    assert (
        describe("rs-b", RoleChange(Role.STANDBY, 7, None, "zookeeper connection suspended"))
        == "rs-b: role standby: zookeeper connection suspended"
    )
    line = describe("rs-b", RoleChange(Role.STANDBY, 2, "rs-a", "primary is back", True))
    assert line == "rs-b: role standby once the own broker is drained (epoch 2): primary is back"


def test_segregated_standby_takes_an_epoch_for_its_own_journal() -> None:
    roles = Roles("rs-b", policy=Policy.SEGREGATED)
    roles.apply(Started("backup"))
    change = roles.apply(EpochTaken(4))
    assert change == RoleChange(Role.STANDBY, 4, None, "own journal's epoch taken")
    assert roles.epoch == 4


def test_own_epoch_older_than_the_held_one_or_taken_while_active_changes_nothing() -> None:
    roles = backup_active(epoch=6)
    assert roles.apply(EpochTaken(7)) is None
    assert roles.epoch == 6
    standby = Roles("rs-b", policy=Policy.SEGREGATED)
    standby.apply(EpochTaken(5))
    assert standby.apply(EpochTaken(5)) is None
    assert standby.apply(EpochTaken(3)) is None
    assert standby.epoch == 5
