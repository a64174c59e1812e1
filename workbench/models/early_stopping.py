"""Early stopping on a watched loss, with the best epoch's weights kept."""

import copy
import math

from torch import nn


class EarlyStopping:
    """Watches a module's loss epoch by epoch: keeps a copy of its weights at the lowest
    loss so far, and says when ``patience`` epochs have passed without a lower one."""

    def __init__(self, module: nn.Module, patience: int):
        self.module, self.patience = module, patience
        self.best_loss, self.best_epoch = math.inf, 0
        self.best_state = copy.deepcopy(module.state_dict())

    def should_stop(self, epoch: int, loss: float) -> bool:
        """Record ``epoch``'s ``loss``; True once ``patience`` epochs passed since the best."""
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.best_state = loss, epoch, copy.deepcopy(self.module.state_dict())
            return False
        return epoch - self.best_epoch >= self.patience

    def restore(self) -> None:
        """Load the best epoch's weights back into the module."""
        self.module.load_state_dict(self.best_state)
