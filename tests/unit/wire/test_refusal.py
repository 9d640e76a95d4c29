import pytest

from reporting.wire.consumer import is_refusal


@pytest.mark.parametrize(
    "message",
    [
        "User name [reporting] or password is invalid.",
        "User producer is not authorized to read from: queue://gvp.reporting.cdr",
        "AMQ229031: Unable to validate user from /127.0.0.1:5000. Username: x",
        "AMQ229032: User: x does not have permission='CONSUME' on address gvp.reporting.cdr",
    ],
)
def test_credential_and_right_errors_are_refusals(message: str) -> None:
    assert is_refusal(message)


@pytest.mark.parametrize(
    "message", ["Broker is shutting down", "(no message)", "Unknown STOMP action"]
)
def test_other_broker_errors_are_not(message: str) -> None:
    assert not is_refusal(message)
