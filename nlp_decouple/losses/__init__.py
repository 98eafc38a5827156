from .gather import gather_batch, world_size
from .inforeg import InfoRegLoss, covariance_term, invariance_term, label_similarity, variance_term
from .supcon import SupConLoss

__all__ = ["InfoRegLoss", "SupConLoss", "covariance_term", "gather_batch", "invariance_term", "label_similarity",
           "variance_term", "world_size"]
