"""Summary tables, plots and reports shared by every stage."""
