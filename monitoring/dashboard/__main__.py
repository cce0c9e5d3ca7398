"""`python -m monitoring.dashboard`: runs `monitoring.dashboard.app`."""

from monitoring.dashboard.app import main

raise SystemExit(main())
