"""One module per ``fm9g`` subcommand (see :mod:`fm9g.cli`)."""
