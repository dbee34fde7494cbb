"""`python -m gateway.report` is `gateway report`."""

from . import main

raise SystemExit(main())
