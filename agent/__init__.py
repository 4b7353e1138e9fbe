"""Edge agent for community security cameras.

Data flows one way: source -> detector -> tracker -> event builder -> outbox -> publisher ->
MQTT link -> broker. ``app`` wires the parts; ``cli`` is the only entry point.
"""

__version__ = "0.1.0"
