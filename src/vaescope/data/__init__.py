"""Datasets: the Dataset arrays and their checks, the sources (embedded MNIST, IDX, .npz, synthetic), batches."""

from vaescope.data.dataset import Dataset
from vaescope.data.sources import load_dataset

__all__ = ["Dataset", "load_dataset"]
