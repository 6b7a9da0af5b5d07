"""The Cloudflare Email Security detections API: URL, auth, envelope, models."""

from worker.cloudflare.client import Credentials, DetectionsClient, detections_url
from worker.cloudflare.models import Detections

__all__ = ["Credentials", "Detections", "DetectionsClient", "detections_url"]
