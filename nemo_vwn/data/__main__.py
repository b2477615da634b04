"""``python -m nemo_vwn.data``: the data step without the ``nemo-vwn`` CLI (same options)."""

import sys

from nemo_vwn.data.cli import main

sys.exit(main())
