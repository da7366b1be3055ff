"""Live tests: the vTiger and SuiteCRM connectors against real servers.

Skipped unless ``CRMSYNC_LIVE_VTIGER_URL`` / ``CRMSYNC_LIVE_SUITECRM_URL`` is set (CI
cannot reach a real CRM: the cassettes carry these exchanges there). The loopback
servers of ``shared/real-crms/install.sh`` are::

    CRMSYNC_LIVE_VTIGER_URL=http://127.0.0.1:8081     # user admin; access key in
    CRMSYNC_LIVE_VTIGER_ACCESS_KEY=$(cat /opt/vtiger-admin-accesskey)
    CRMSYNC_LIVE_SUITECRM_URL=http://127.0.0.1:8082   # user admin
    CRMSYNC_LIVE_SUITECRM_PASSWORD=Admin@123

Each run creates its own contacts (addresses tagged with the run) and keeps the 250
seeded ones (``live-seed-NNN@example.com``) for the next run.
"""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="session")
def tag() -> str:
    """Unique to this run: the run's contacts and lists carry it."""
    return f"r{int(time.time())}"
