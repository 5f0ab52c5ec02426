"""MLflow run tracking for `mlo run --track` and `mlo health --track` (the `mlflow` extra).

One MLflow run per command: its parameters, its metrics (latency, time to first token,
tokens/s) and, for `mlo run`, the results file as an artifact, sent to the tracking server
named by `MLFLOW_TRACKING_URI` (MLflow's own variable; read by MLflow).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ml_offload.errors import ConfigError
from ml_offload.pipeline import PromptResult, percentile

EXPERIMENT = "ml-offload"


def check_tracking() -> None:
    """Fail early, before any work, when tracking cannot happen."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(
            "--track needs MLFLOW_TRACKING_URI (e.g. export MLFLOW_TRACKING_URI=http://127.0.0.1:5000)"
        )
    _mlflow()


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError(
            "--track needs MLflow: pip install 'ml-offload[mlflow]' (or pip install mlflow)"
        ) from None
    return mlflow


def result_metrics(results: Sequence[PromptResult]) -> dict[str, float]:
    """p50/p95 latency and time to first token (ms), tokens/s and counts of a batch of results."""
    good = [r for r in results if r.error is None]
    out: dict[str, float] = {"prompts": len(results), "answered": len(good)}
    for name in ("latency_ms", "ttft_ms", "tokens_per_s"):
        values = [v for r in good if (v := getattr(r, name)) is not None]
        for q in (50, 95):
            p = percentile(values, q)
            if p is not None:
                out[f"{name}_p{q}"] = p
    out["completion_tokens"] = sum(r.completion_tokens or 0 for r in good)
    return out


def log_run(
    name: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    artifact: Path | None = None,
) -> str:
    """One run in the `ml-offload` experiment; its run id."""
    mlflow = _mlflow()
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params({k: v for k, v in params.items() if v is not None})
        mlflow.log_metrics(dict(metrics))
        if artifact is not None:
            mlflow.log_artifact(str(artifact))
        run_id: str = run.info.run_id
    return run_id
