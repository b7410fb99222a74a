"""Rule filters, one module per rule family: language, URL, MAP-CC rules, FineWeb-2 repetition and quality."""
