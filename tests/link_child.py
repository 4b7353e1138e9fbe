"""Runs an MqttLink in a process of its own, for tests that SIGKILL the agent side.

Usage: ``python -m tests.link_child PORT BASE_TOPIC``; prints ``connected`` once online.
"""

from __future__ import annotations

import sys
import time

from agent.config import MqttConfig
from agent.delivery.mqtt_link import MqttLink


def main() -> int:
    port, base = int(sys.argv[1]), sys.argv[2]
    cfg = MqttConfig(port=port, reconnect_min_s=0.05, reconnect_max_s=0.5)
    link = MqttLink(cfg, base, "edge-child", b'{"state":"offline"}', lambda: b'{"state":"online"}')
    link.start()
    if not link.wait_connected(10):
        return 2
    print("connected", flush=True)
    time.sleep(120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
