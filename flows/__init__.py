"""Prefect flows: the pipeline flow and its schedules. Prefect is imported here, never in alignpipe/."""
