"""Camera sources and the capture thread: frames in."""
