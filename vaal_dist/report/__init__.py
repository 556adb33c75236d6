"""Self-contained HTML reports: a round's ``report.html``, an experiment's ``experiment.html`` (``pages``)."""
