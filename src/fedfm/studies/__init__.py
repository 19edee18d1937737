"""FM-for-FL studies: grids of ordinary runs, resumable cell by cell, summarised as tables."""
