"""Data: sources with the paper's splits, preprocessing ops, input pipelines."""
# Importing these modules registers their sources.
from tfrevisit.data import fashion_mnist
from tfrevisit.data import image_files
from tfrevisit.data.pipeline import make_dataset
from tfrevisit.data.preprocess import get_preprocess_fn
from tfrevisit.data.sources import get_source
from tfrevisit.data.sources import Source
from tfrevisit.data.sources import SPLITS
