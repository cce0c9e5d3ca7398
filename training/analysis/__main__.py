"""`python -m training.analysis`: runs `training.analysis.cli`."""

from training.analysis.cli import main

raise SystemExit(main())
