"""Training: the optimizer, the engine (one epoch), a whole run with resume, many models at once."""
