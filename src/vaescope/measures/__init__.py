"""Pure measures of a latent space: statistics, activity criteria, information, gains, generation, the variance law."""
