"""The tools' runtime: what ``tools/*`` import on top of the GC core.

``import mmgc`` loads none of it; each tool imports the modules it uses, and a
config that wants one of its hooks imports that module in ``custom_imports``
(e.g. ``imports=['mmgc', 'mmgc.runtime.hooks']``). docs/tools.md lists the
modules that cover an MMEngine or torch gap; the others are the comparison,
the demo with its dataset, and the GC diagnostics' plots. Importing any of them
checks that the installed MMCV and MMDetection are versions mmgc is tested with.
"""

import mmcv
import mmdet

from ..version import check_version

check_version('mmcv', mmcv.__version__)
check_version('mmdet', mmdet.__version__)
