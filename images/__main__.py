"""``python -m images`` is ``python -m images.build``."""

from images.build import main

raise SystemExit(main())
