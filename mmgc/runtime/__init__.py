"""The tools' runtime: what ``tools/*`` import on top of the GC core (docs/tools.md,
"What the tools add to MMEngine and torch"). ``import mmgc`` loads none of it; a config
that wants one of its hooks imports that module in ``custom_imports``. Importing any of
them checks that the installed MMCV and MMDetection are versions mmgc is tested with.
"""

import mmcv
import mmdet

from ..version import check_version

check_version('mmcv', mmcv.__version__)
check_version('mmdet', mmdet.__version__)
