"""Test helper: an exit probe. Python imports ``sitecustomize`` at start-up from
``sys.path``, so a test that puts this folder first on ``PYTHONPATH`` and sets
``MMGC_EXIT_PROBE=DIR`` (``tests.conftest.ExitProbe``) has every Python process
it starts, torchrun's workers included, write ``DIR/<pid>.json`` as it exits:
its ``argv``, ``RANK``, whether it imported ``torch.distributed``, whether a
default process group was still alive (``alive``) and how many process groups
Python objects still held (``groups``). The handler is registered
before any other, so it runs after all of them (``atexit`` runs last-in,
first-out): it sees the state the interpreter finalizes with, which is where a
live gloo group can abort the process. A process that then leaves through
``os._exit`` (``mmgc.runtime.distributed.leave``, which runs the ``atexit``
handlers first) does not finalize: the probe's ``os._exit`` marks its record so
(``finalizes``: False), or writes one there if the handlers did not run.
"""

import atexit
import gc
import json
import os
import sys
import warnings


def _groups(dist) -> int:
    """How many process groups (``ProcessGroup``, gloo's backend) Python objects
    still hold: their threads run until the last reference goes, at finalization."""
    kinds = tuple(k for k in (getattr(dist, n, None) for n in _GROUP_TYPES) if k is not None)
    seen = set()
    with warnings.catch_warnings():  # isinstance on a deprecated object warns
        warnings.simplefilter('ignore')
        for obj in gc.get_objects():
            seen.update(id(r) for r in gc.get_referents(obj) if isinstance(r, kinds))
    return len(seen)


_GROUP_TYPES = ('ProcessGroup', 'ProcessGroupGloo')


def _leaving_by_os_exit() -> bool:
    """Whether these handlers run inside ``mmgc.runtime.distributed.leave``, which
    calls ``os._exit`` next. Only saves the slow scan: if ``os._exit`` then does
    not come, the record stays ``finalizes`` True with ``groups`` None, which
    fails ``ExitProbe.assert_ended``."""
    frame = sys._getframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == 'leave' and code.co_filename.endswith('distributed.py'):
            return True
        frame = frame.f_back
    return False


def _record(finalizes: bool = True) -> None:
    """Write this process's record at once (``groups`` None), then, where the
    process may go on to finalize, count the groups Python holds (about half a
    second with MMDetection loaded) and write it again: a launcher that kills
    the process meanwhile still finds a record."""
    dist = sys.modules.get('torch.distributed')
    available = dist is not None and dist.is_available()
    record = dict(
        pid=os.getpid(),
        argv=sys.argv,
        rank=os.environ.get('RANK'),
        imported_dist=dist is not None,
        alive=bool(available and dist.is_initialized()),
        groups=None,
        finalizes=finalizes,
    )
    _write(record)
    if finalizes and not _leaving_by_os_exit():
        record['groups'] = _groups(dist) if available else 0
        _write(record)


def _write(record: dict) -> None:
    with open(_path(), 'w') as file:
        json.dump(record, file)


def _path() -> str:
    return os.path.join(os.environ['MMGC_EXIT_PROBE'], f'{os.getpid()}.json')


def _leaving(os_exit):
    started = os.getpid()

    def leave(status):
        if os.getpid() != started:  # a forked child (a pool's worker) leaving
            os_exit(status)
        try:
            with open(_path()) as file:
                record = json.load(file)
        except FileNotFoundError:
            _record(finalizes=False)
        else:
            record['finalizes'] = False
            _write(record)
        os_exit(status)

    return leave


if os.environ.get('MMGC_EXIT_PROBE'):
    atexit.register(_record)
    os._exit = _leaving(os._exit)
