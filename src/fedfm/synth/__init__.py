"""FM-generated synthetic data: `fedfm synth` writes a filtered, labelled dataset with a data
card (prompts, generate, filters, card, make); a run uses it to warm up the initial model or
to give clients the classes they lack (use)."""
