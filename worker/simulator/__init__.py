"""A local stand-in for the Cloudflare Email Security API (demo, tests, benchmarks)."""

from worker.simulator.app import API_PREFIX, Simulator
from worker.simulator.catalog import catalog_id
from worker.simulator.config import DEFAULT_TOKEN, FAULT_KINDS, FaultKind, SimulatorConfig

__all__ = [
    "API_PREFIX",
    "DEFAULT_TOKEN",
    "FAULT_KINDS",
    "FaultKind",
    "Simulator",
    "SimulatorConfig",
    "catalog_id",
]
