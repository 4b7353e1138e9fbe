"""From frames to visits: detector, motion gate, tracker, events, snapshots."""
