"""Widgets for JupyterLab: build a model (`builder`), look inside it (`features`), watch training (`monitor`) and
browse registered versions (`registry`), and predict with one (`predict`). `import core_models.widgets as w; w.ModelBuilder()`.

Hand-written re-exports; each submodule is generated from its notebook under `nbs/widgets/`."""

from .builder import ModelBuilder
from .features import FeatureMapExplorer, trained_digits_model
from .monitor import TrainingMonitor
from .registry import RegistryBrowser, diff_versions, version_rows
from .predict import PredictWidget
