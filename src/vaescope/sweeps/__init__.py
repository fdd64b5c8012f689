"""``vaescope sweep``: a grid of configs x seeds as ordinary run directories, on local workers or Ray."""
