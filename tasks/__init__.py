"""Prefect tasks over the runner's per-stage execution. Prefect is imported here, never in alignpipe/."""
from tasks.stages import GPU_LIMIT_NAME, ensure_gpu_limit, prefect_executor, stage_task

__all__ = ["GPU_LIMIT_NAME", "ensure_gpu_limit", "prefect_executor", "stage_task"]
