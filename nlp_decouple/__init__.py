"""nlp_decouple: train text encoders end to end (BP) or decoupled into layer groups (SCPL and kin)."""
from .config import Config, load_config

__version__ = "0.1.0"
__all__ = ["Config", "load_config", "__version__"]
