"""vaescope's own VAEs, the ELBO terms written once, and the adapter that makes any VAE look like one."""
