"""Batch evaluation of Bedrock Agents: datasets, scorers, results, baselines and reports.

The modules imported here and `chunks` (cases per task run) are pure (no Prefect, boto3
or HTTP); the Prefect side is `casework` (one case and its trace), `chunktask` (the task
running a chunk of cases), `localrun` and `fanout` (chunks on task runners), `sharding`
(deployment fan-out) and `artifacts`, composed by `flows/batch_evaluation.py`.
"""

from nexus_bedrock_tasks.evaluation.baseline import Baseline, BaselineComparison
from nexus_bedrock_tasks.evaluation.cases import CaseOutcome, EvalCase
from nexus_bedrock_tasks.evaluation.dataset import BadLine, Dataset
from nexus_bedrock_tasks.evaluation.errors import DatasetError, PassRateBelowMinimum
from nexus_bedrock_tasks.evaluation.report import EvalSummary, RunStats
from nexus_bedrock_tasks.evaluation.results import CaseResult, ResultsWriter, read_results
from nexus_bedrock_tasks.evaluation.scorers import (
    BUILTIN_SCORERS,
    Scorer,
    ScoreValue,
    score_case,
    scorer_names,
)

__all__ = [
    "BUILTIN_SCORERS",
    "BadLine",
    "Baseline",
    "BaselineComparison",
    "CaseOutcome",
    "CaseResult",
    "Dataset",
    "DatasetError",
    "EvalCase",
    "EvalSummary",
    "PassRateBelowMinimum",
    "ResultsWriter",
    "RunStats",
    "ScoreValue",
    "Scorer",
    "read_results",
    "score_case",
    "scorer_names",
]
