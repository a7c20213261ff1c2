"""The tools' runtime: what ``tools/*`` import on top of the GC core (docs/tools.md,
"What the tools add to MMEngine and torch"). ``import mmgc`` loads none of it; a config
that wants one of its hooks imports that module in ``custom_imports``. Importing any of
them checks that the installed MMCV, and MMDetection where it is installed (a stack for
segmentation or classification may have none), are versions mmgc is tested with; only
the top of ``mmdet`` is imported for that, none of its models or tools.
"""

import importlib.util

import mmcv

from ..version import check_version

check_version('mmcv', mmcv.__version__)
if importlib.util.find_spec('mmdet') is not None:
    import mmdet

    check_version('mmdet', mmdet.__version__)
