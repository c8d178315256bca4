"""One module per CLI subcommand (see :mod:`pengwin_demo.__main__`)."""
