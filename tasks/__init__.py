"""Prefect tasks over the core library (Prefect is imported here, never in alignpipe/)."""
