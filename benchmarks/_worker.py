"""Run one benchmark measurement in its own process (a clean peak RSS, no state left by earlier cells)."""

from __future__ import annotations

import json
import os
import subprocess


def run_worker(cmd: list[str], **env: str) -> dict:
    """Run ``cmd`` (which prints one JSON object on its last stdout line) and return that object.

    ``env`` adds variables to this process's environment (progress bars are always off). A failed worker
    returns ``{"error": <its last stderr line>}`` so one failing cell does not end the whole benchmark.
    """
    env = {**os.environ, "HARDBATCH_PROGRESS": "0", **env}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])
