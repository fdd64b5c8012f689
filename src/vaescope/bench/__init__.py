"""``vaescope bench``: vaescope's engine against a plain PyTorch loop and pythae, side by side."""
