from .inforeg import InfoRegLoss, covariance_term, invariance_term, label_similarity, variance_term
from .supcon import SupConLoss

__all__ = ["InfoRegLoss", "SupConLoss", "covariance_term", "invariance_term", "label_similarity",
           "variance_term"]
