"""The adaptive hyperparameter scheduler.

``calibrate`` picks a run's starting schedule from the data's profile, its drift and
past runs (``KnowledgeBase``); ``AdaptiveScheduler`` steers the run by convergence
signals, rolls back its own bad changes, and records every change as a
``ScheduleEvent``; ``ResourceController`` holds a throughput budget; ``Trace`` keeps
the curves for the report.
"""

from recsys_retrain.schedule.calibrate import calibrate
from recsys_retrain.schedule.controller import AdaptiveScheduler, Components, Limits
from recsys_retrain.schedule.events import ScheduleEvent
from recsys_retrain.schedule.knowledge import KnowledgeBase, Record
from recsys_retrain.schedule.plan import Reason, SchedulePlan
from recsys_retrain.schedule.trace import Trace

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
