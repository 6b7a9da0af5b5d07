"""A local stand-in for the Cloudflare Email Security API (demo, tests, benchmarks)."""

from worker.simulator.app import API_PREFIX, DEFAULT_TOKEN, Simulator, SimulatorConfig
from worker.simulator.payloads import catalog_id

__all__ = ["API_PREFIX", "DEFAULT_TOKEN", "Simulator", "SimulatorConfig", "catalog_id"]
