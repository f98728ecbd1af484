"""``python -m ascend_moe <command>``; see ``python -m ascend_moe --help``."""
from .cli import main

raise SystemExit(main())
