"""One module per core subcommand of ``spikegpt`` (see ``spikegpt.cli``)."""
