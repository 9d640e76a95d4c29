"""The data path in one lane: broker batch -> journal (fsync) -> ack (`intake`); journal ->
database (`drainer`)."""

from reporting.pipeline.drainer import Drainer
from reporting.pipeline.intake import Intake, open_journal

__all__ = ["Drainer", "Intake", "open_journal"]
