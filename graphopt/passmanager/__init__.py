"""The pass manager: passes, pipelines, the context and instruments."""

from graphopt.passmanager.base import (
    INVARIANTS,
    NoOptions,
    Pass,
    PassResult,
    get_pass,
    option_fields_of,
    registered_passes,
    register_pass,
)
from graphopt.passmanager.context import CONFIG_KEYS, PROVIDERS, TARGETS, PassContext, for_provider, register_config
from graphopt.passmanager.instruments import Bisect, DumpIR, Instrument, ModelRunner, Reproducer, VerifyEach
from graphopt.passmanager.manager import PassManager, PassRecord, RunReport, RunResult, StopPipeline, count_nodes
from graphopt.passmanager.pipeline import NAMED_PIPELINES, Fixpoint, Named, Pipeline, Step, register_pipeline

__all__ = [
    "INVARIANTS", "NoOptions", "Pass", "PassResult", "get_pass", "option_fields_of", "registered_passes", "register_pass",
    "CONFIG_KEYS", "PROVIDERS", "TARGETS", "PassContext", "for_provider", "register_config",
    "Bisect", "DumpIR", "Instrument", "ModelRunner", "Reproducer", "VerifyEach",
    "PassManager", "PassRecord", "RunReport", "RunResult", "StopPipeline", "count_nodes",
    "NAMED_PIPELINES", "Fixpoint", "Named", "Pipeline", "Step", "register_pipeline",
]
