"""The running box: wiring, heartbeat, liveness, systemd, clock, logs."""
