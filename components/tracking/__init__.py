"""MLflow tracking for the pipelines: URIs, experiments with explicit artifact locations, and a
resilient Tracker that buffers to a local file when the backend is unreachable."""
from components.tracking.params import config_params, is_secret_key, mlflow_name
from components.tracking.tracker import Tracker, TrackerStatus
from components.tracking.uri import get_or_create_experiment, tracking_uri

__all__ = ["Tracker", "TrackerStatus", "config_params", "get_or_create_experiment", "is_secret_key",
           "mlflow_name", "tracking_uri"]
