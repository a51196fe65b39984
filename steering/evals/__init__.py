"""The steering evaluations: each returns a tidy :class:`~steering.evals.table.Table` of dataclass rows.

- :mod:`~steering.evals.sentiment`: sentiment of self-reports (offline VADER by default, judges optional).
- :mod:`~steering.evals.confidence`: normalised P(True) after "Is your proposed answer correct?".
- :mod:`~steering.evals.refusal`: refusal rate on benign / borderline / harmful requests (rules or judge).
- :mod:`~steering.evals.backtracking`: backtracking rate on arithmetic problems (rules or judge).
- :mod:`~steering.evals.coherence`: repetition / gibberish verdicts and the > 90 % masking rule.
- :mod:`~steering.evals.judges`: local HF and OpenAI-compatible HTTP judges.
"""

from steering.evals.backtracking import backtracking_rate, classify_backtracking, evaluate_backtracking
from steering.evals.coherence import check_coherence, incoherence_rate, is_masked
from steering.evals.confidence import evaluate_confidence, grade_answer, mean_p_true, propose_answers
from steering.evals.judges import JudgeError, JudgeUnavailableError, LocalHFJudge, OpenAIJudge
from steering.evals.refusal import classify_refusal, evaluate_refusal, refusal_rate
from steering.evals.sentiment import evaluate_sentiment, judge_scorer, mean_score, score_self_reports, vader
from steering.evals.table import Table

__all__ = [
    "JudgeError",
    "JudgeUnavailableError",
    "LocalHFJudge",
    "OpenAIJudge",
    "Table",
    "backtracking_rate",
    "check_coherence",
    "classify_backtracking",
    "classify_refusal",
    "evaluate_backtracking",
    "evaluate_confidence",
    "evaluate_refusal",
    "evaluate_sentiment",
    "grade_answer",
    "incoherence_rate",
    "is_masked",
    "judge_scorer",
    "mean_p_true",
    "mean_score",
    "propose_answers",
    "refusal_rate",
    "score_self_reports",
    "vader",
]
