"""The model table (capabilities, limits, prices, retirement dates as data) and what calls cost."""
