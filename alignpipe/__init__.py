"""alignpipe: an end-to-end DPO alignment pipeline. The core library imports neither Prefect nor MLflow."""
__version__ = "0.1.0"
