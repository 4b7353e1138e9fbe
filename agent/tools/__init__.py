"""Commands beside ``run``: demo, detect, discover, evaluate, draw, models, tail."""
