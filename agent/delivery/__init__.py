"""From visits to the broker: the durable outbox, the publisher, the MQTT link."""
