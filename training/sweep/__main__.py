"""`python -m training.sweep`: runs `training.sweep.cli`."""

from training.sweep.cli import main

raise SystemExit(main())
