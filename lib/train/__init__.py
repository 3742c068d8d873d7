"""Training for stages 03-06 on accelerate: ``python -m lib.train`` / ``accelerate launch -m lib.train``."""
