"""The adaptive hyperparameter scheduler.

``calibrate`` picks a run's starting schedule from the data's profile, its drift and
past runs (``KnowledgeBase``); ``AdaptiveScheduler`` steers the run by convergence
signals, rolls back its own bad changes, and records every change as a
``ScheduleEvent``; ``ResourceController`` holds a throughput budget; ``Trace`` keeps
the curves for the report.
"""

from pipeline.schedule.calibrate import calibrate
from pipeline.schedule.controller import AdaptiveScheduler, Components, Limits
from pipeline.schedule.events import ScheduleEvent
from pipeline.schedule.knowledge import KnowledgeBase, Record
from pipeline.schedule.plan import Reason, SchedulePlan
from pipeline.schedule.trace import Trace

__all__ = [
    "AdaptiveScheduler",
    "Components",
    "KnowledgeBase",
    "Limits",
    "Reason",
    "Record",
    "ScheduleEvent",
    "SchedulePlan",
    "Trace",
    "calibrate",
]
