"""vaescope inside other people's loops: the LatentMonitor, Lightning and pythae callbacks."""
