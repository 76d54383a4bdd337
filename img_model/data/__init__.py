"""IMG's data: queries with their features and text from the stores, aligned by IMG's rules, in batches."""
