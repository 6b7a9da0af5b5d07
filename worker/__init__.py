"""Cloudflare Email Security enrichment worker: investigate ids in, enrichment events out."""

__version__ = "0.1.0"
