"""Generation: samplers fitted on a trained run's latent space (``vaescope generate``), the
generation score with no download (``vaescope score``), and the table of objectives x samplers."""
