"""The database sink: reports, rejected reports, journal positions and fence in one transaction."""
