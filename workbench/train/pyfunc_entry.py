"""The file MLflow runs to load a registered ensemble ("models from code").

Logged as the ``python_model`` of every ensemble, so that loading one executes this
code from the package shipped with the model and unpickles nothing: the weights are
read with ``torch.load(weights_only=True)`` and the featurizer from JSON.
"""

import mlflow

from workbench.train.registry import EnsembleModel

mlflow.models.set_model(EnsembleModel())
