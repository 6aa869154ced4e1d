"""The subcommands of `pegasus`, one module each (sample and generate share one): each module's
`add(sub, common)` adds its parser, options and help beside the handler that runs it, and binds
that handler; `pegasus.cli` only assembles them. Handlers import their stage inside, so that
`pegasus --help` loads no stage."""
